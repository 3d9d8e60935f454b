import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename } from 'node:path'
import { DTYPE_BYTES } from './safetensors.ts'
import type { DType } from './safetensors.ts'
import { f32ToBf16, f32ToF16 } from './dtype.ts'

/**
 * A tensor to write. `data` may be a function so that a caller can produce one tensor at a
 * time: the writer asks for it only when it reaches it, and drops it once written.
 */
export interface TensorToWrite {
  name: string
  dtype: DType
  shape: number[]
  data: Float32Array | (() => Float32Array | Promise<Float32Array>)
}

/** Bytes converted and written per `write` call: bounds the extra memory for 16-bit output. */
const CHUNK_ELEMS = 4 << 20

/** The serialized header: 8-byte length then JSON padded with spaces to an 8-byte boundary, as HF does. */
export function safetensorsHeader (tensors: { name: string, dtype: DType, shape: number[] }[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {}
  if (metadata != null && Object.keys(metadata).length > 0) header.__metadata__ = metadata
  let offset = 0
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name in header) throw new Error(`safetensors: duplicate or reserved tensor name ${JSON.stringify(t.name)}`)
    if (!(t.dtype in DTYPE_BYTES)) throw new Error(`safetensors: tensor ${t.name}: unsupported dtype ${JSON.stringify(t.dtype)}`)
    const bytes = numel(t.shape) * DTYPE_BYTES[t.dtype]
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8')
  const padded = Math.ceil(json.length / 8) * 8
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)])
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  return Buffer.concat([len, json])
}

/**
 * Writes a `.safetensors` file, one tensor at a time, converting float32 data to the tensor's
 * dtype in bounded chunks: a multi-GB file never needs more than its largest tensor in memory.
 */
export async function writeSafetensors (path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<void> {
  const header = safetensorsHeader(tensors, metadata)
  const fh = await open(path, 'w')
  try {
    await writeAll(fh, header)
    const produce = async (t: TensorToWrite): Promise<Float32Array> => typeof t.data === 'function' ? await t.data() : t.data
    let next = tensors.length > 0 ? produce(tensors[0]) : undefined
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]
      const data = await (next as Promise<Float32Array>)
      // Start producing the next tensor (e.g. in worker threads) while this one is written.
      next = i + 1 < tensors.length ? produce(tensors[i + 1]) : undefined
      next?.catch(() => {})
      const n = numel(t.shape)
      if (data.length !== n) throw new Error(`${basename(path)}: tensor ${t.name}: ${data.length} values given for shape ${JSON.stringify(t.shape)} (${n})`)
      await writeTensorData(fh, data, t.dtype)
    }
  } finally {
    await fh.close()
  }
}

/** Appends `data` converted to `dtype` at the file's current position. */
export async function writeTensorData (fh: FileHandle, data: Float32Array, dtype: DType): Promise<void> {
  if (dtype === 'F32') {
    for (let i = 0; i < data.length; i += CHUNK_ELEMS) {
      const part = data.subarray(i, Math.min(data.length, i + CHUNK_ELEMS))
      await writeAll(fh, new Uint8Array(part.buffer, part.byteOffset, part.byteLength))
    }
    return
  }
  const convert = dtype === 'BF16' ? f32ToBf16 : f32ToF16
  const scratch = new Uint16Array(Math.min(CHUNK_ELEMS, data.length))
  for (let i = 0; i < data.length; i += CHUNK_ELEMS) {
    const part = data.subarray(i, Math.min(data.length, i + CHUNK_ELEMS))
    const out = convert(part, scratch.subarray(0, part.length))
    await writeAll(fh, new Uint8Array(out.buffer, out.byteOffset, out.byteLength))
  }
}

async function writeAll (fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done)
    done += bytesWritten
  }
}

function numel (shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1)
}
