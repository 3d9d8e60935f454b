import { stat } from 'node:fs/promises'
import type { ModelConfig } from './config.ts'
import { Checkpoint } from './checkpoint.ts'
import type { RawTensor } from './checkpoint.ts'
import { GgufCheckpoint } from './gguf/checkpoint.ts'
import type { TextTokenizer } from './tokenizer.ts'

export type ModelFormat = 'safetensors' | 'gguf'

/**
 * A model's weights, config and tokenizer, wherever they are stored: a Hugging Face directory
 * (Checkpoint) or a GGUF file (GgufCheckpoint). Tensors use Hugging Face names and layouts and
 * come in their stored type (see RawTensor).
 */
export interface ModelSource {
  readonly format: ModelFormat
  /** What `--model` named: the directory or the .gguf file (span workers reopen it from here). */
  readonly path: string
  /** Default display name: the directory's or the file's name (without .gguf). */
  readonly name: string
  readonly config: ModelConfig
  has: (name: string) => boolean
  readRaw: (name: string, expectedShape?: number[]) => Promise<RawTensor>
  readFloat32: (name: string, expectedShape?: number[]) => Promise<Float32Array>
  /** All tensors of one block, shape-checked, in blockTensorShapes' order. */
  readBlockRaw: (block: number) => Promise<RawTensor[]>
  /** Embeddings, final norm, LM head (absent when tied), in headTensorShapes' order. */
  readHeadRaw: () => Promise<RawTensor[]>
  checkBlock: (block: number) => void
  /** Bytes the named tensors occupy as stored, from the index alone (progress totals). */
  storedBytes: (names: string[]) => Promise<number>
  /** The model's tokenizer, or undefined when it has none. */
  tokenizer: () => Promise<TextTokenizer | undefined>
  /** tokenizer_config.json or its equivalent (chat template, special tokens), if any. */
  tokenizerConfig: () => Promise<Record<string, unknown> | undefined>
  close: () => Promise<void>
}

/** A regular file is read as GGUF; anything else as a Hugging Face model directory. */
export async function openModel (path: string): Promise<ModelSource> {
  const st = await stat(path).catch(() => undefined)
  if (st?.isFile() === true) return await GgufCheckpoint.open(path)
  return await Checkpoint.open(path)
}
