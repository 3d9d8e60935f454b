import { CheckpointError } from '../safetensors.ts'

/**
 * A GGUF file that cannot be used, naming the file (and the tensor or key). It is a
 * CheckpointError so callers that handle bad safetensors checkpoints handle these too.
 */
export class GgufError extends CheckpointError {
  constructor (message: string) { super(message, 'gguf'); this.name = 'GgufError' }
}

export interface GgmlType {
  id: number
  name: string
  /** Elements per block (1 for plain floats and integers). */
  blockSize: number
  /** Bytes per block. */
  typeSize: number
}

/** ggml's tensor types (ggml.h `enum ggml_type`, sizes from ggml-common.h's block structs). */
const TYPES: GgmlType[] = [
  [0, 'F32', 1, 4], [1, 'F16', 1, 2], [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20],
  [6, 'Q5_0', 32, 22], [7, 'Q5_1', 32, 24], [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 36],
  [10, 'Q2_K', 256, 84], [11, 'Q3_K', 256, 110], [12, 'Q4_K', 256, 144], [13, 'Q5_K', 256, 176],
  [14, 'Q6_K', 256, 210], [15, 'Q8_K', 256, 292], [16, 'IQ2_XXS', 256, 66], [17, 'IQ2_XS', 256, 74],
  [18, 'IQ3_XXS', 256, 98], [19, 'IQ1_S', 256, 50], [20, 'IQ4_NL', 32, 18], [21, 'IQ3_S', 256, 110],
  [22, 'IQ2_S', 256, 82], [23, 'IQ4_XS', 256, 136], [24, 'I8', 1, 1], [25, 'I16', 1, 2],
  [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8], [29, 'IQ1_M', 256, 56],
  [30, 'BF16', 1, 2], [34, 'TQ1_0', 256, 54], [35, 'TQ2_0', 256, 66], [39, 'MXFP4', 32, 17],
  [40, 'NVFP4', 64, 36]
].map(([id, name, blockSize, typeSize]) => ({ id, name, blockSize, typeSize }) as GgmlType)

const BY_ID = new Map(TYPES.map(t => [t.id, t]))
const BY_NAME = new Map(TYPES.map(t => [t.name, t]))

export function ggmlType (id: number): GgmlType | undefined { return BY_ID.get(id) }

export function ggmlTypeByName (name: string): GgmlType {
  const t = BY_NAME.get(name)
  if (t == null) throw new Error(`unknown ggml type ${name}`)
  return t
}

/**
 * The block formats Plexus can turn into float32: all that Q4_K_M and Q5_K_M files use, and the
 * legacy 32-element formats llama.cpp falls back to for rows that are not whole 256-element blocks.
 */
export const DEQUANTIZABLE = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K'] as const
export type DequantizableType = typeof DEQUANTIZABLE[number]

/** GGUF metadata value types (gguf.h `enum gguf_type`). */
export const GGUF_VALUE = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7,
  STRING: 8, ARRAY: 9, UINT64: 10, INT64: 11, FLOAT64: 12
} as const

/** 64-bit integers become numbers when exact, bigints otherwise; numeric arrays stay plain arrays. */
export type GgufValue = number | bigint | boolean | string | GgufValue[]
