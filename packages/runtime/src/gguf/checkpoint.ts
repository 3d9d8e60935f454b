import { basename } from 'node:path'
import type { ModelConfig } from '../config.ts'
import { rawFloat32 } from '../checkpoint.ts'
import { TensorSource } from '../tensor-source.ts'
import type { RawTensor, WeightDType } from '../checkpoint.ts'
import type { ModelSource } from '../model-source.ts'
import type { TextTokenizer } from '../tokenizer.ts'
import { GgufFile } from './reader.ts'
import type { GgufTensorInfo } from './reader.ts'
import { readGgufConfig } from './config.ts'
import { GgufError } from './types.ts'
import { ggufTokenizer, ggufTokenizerConfig } from './tokenizer.ts'

/** Types a RawTensor holds as stored; any other type is widened to F32 at read. */
const STORED: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'] satisfies WeightDType[])

const HEAD_NAMES: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight'
}
const BLOCK_PARTS: Record<string, string> = {
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down'
}

/** The GGUF name llama.cpp gives a Hugging Face tensor, or undefined for names it has no tensor for. */
export function ggufNameOf (hf: string): string | undefined {
  if (HEAD_NAMES[hf] != null) return HEAD_NAMES[hf]
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hf)
  if (m == null || BLOCK_PARTS[m[2]] == null) return undefined
  return `blk.${m[1]}.${BLOCK_PARTS[m[2]]}.${m[3]}`
}

/**
 * llama.cpp's converter reorders each head's q/k rows for its rotary layout (pairs adjacent
 * instead of split into halves): GGUF row h·d + 2j + t holds HF row h·d + t·d/2 + j. Undo it
 * on stored rows: a row of a quantized tensor is whole blocks, so rows move as byte ranges.
 */
export function unpermuteRows (bytes: Uint8Array, rows: number, heads: number): Uint8Array {
  const rowBytes = bytes.length / rows
  const d = rows / heads
  if (!Number.isInteger(d) || d % 2 !== 0 || !Number.isInteger(rowBytes)) throw new RangeError(`cannot split ${rows} rows into ${heads} heads of even size`)
  const out = new Uint8Array(bytes.length)
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < d / 2; j++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * d + 2 * j + t) * rowBytes
        out.set(bytes.subarray(src, src + rowBytes), (h * d + t * d / 2 + j) * rowBytes)
      }
    }
  }
  return out
}

/** unpermuteRows on float32 rows. */
export function unpermuteRotary (data: Float32Array, rows: number, heads: number): Float32Array {
  if (!Number.isInteger(data.length / rows)) throw new RangeError(`cannot split ${rows} rows into ${heads} heads of even size`)
  const out = unpermuteRows(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), rows, heads)
  return new Float32Array(out.buffer)
}

/**
 * A GGUF file as a model source, with Checkpoint's surface: Hugging Face tensor names and
 * layouts, each tensor in its stored type (quantized blocks stay blocks; types a RawTensor cannot
 * hold are widened to F32). Only the header is read at open; each read touches only the bytes of
 * the tensors asked for.
 */
export class GgufCheckpoint extends TensorSource implements ModelSource {
  readonly format = 'gguf'
  readonly path: string
  /** The file's path (where a Checkpoint has its directory). */
  readonly dir: string
  /** The file name without `.gguf`. */
  readonly name: string
  readonly config: ModelConfig
  readonly file: GgufFile
  /** Whether q/k rows are stored in llama.cpp's rotary order (llama-style architectures). */
  private readonly permuted: boolean

  private constructor (file: GgufFile, config: ModelConfig) {
    super()
    this.file = file
    this.path = file.path
    this.dir = file.path
    this.name = basename(file.path).replace(/\.gguf$/i, '')
    this.config = config
    this.permuted = file.metadata.get('general.architecture') !== 'qwen2'
  }

  static async open (path: string): Promise<GgufCheckpoint> {
    const file = await GgufFile.open(path)
    try {
      return new GgufCheckpoint(file, await readGgufConfig(file))
    } catch (err) {
      await file.close()
      throw err
    }
  }

  has (name: string): boolean {
    const g = ggufNameOf(name)
    return g != null && this.file.tensors.has(g)
  }

  /** The files that hold the given tensors: this one file, when it holds any of them. */
  shardsFor (names: Iterable<string>): string[] {
    for (const n of names) if (this.has(n)) return [this.file.name]
    return []
  }

  /** A tensor's GGUF info, checked against the shape the config expects. */
  info (name: string, expectedShape?: number[]): GgufTensorInfo {
    const g = ggufNameOf(name)
    const info = g == null ? undefined : this.file.tensors.get(g)
    if (g == null || info == null) {
      throw new GgufError(`${this.file.name}: tensor ${name}${g != null ? ` (${g})` : ''} is missing from the file`)
    }
    if (expectedShape != null && !sameShape(info.shape, expectedShape)) {
      throw new GgufError(`${this.file.name}: tensor ${g}: shape ${JSON.stringify(info.shape)} does not match the config (expected ${JSON.stringify(expectedShape)} for ${name})`)
    }
    return info
  }

  async readFloat32 (name: string, expectedShape?: number[]): Promise<Float32Array> {
    return rawFloat32(await this.readRaw(name, expectedShape))
  }

  /** A tensor as stored (quantized: raw blocks), in Hugging Face's row order. */
  async readRaw (name: string, expectedShape?: number[]): Promise<RawTensor> {
    const info = this.info(name, expectedShape)
    let dtype: WeightDType
    let bytes: Uint8Array
    if (STORED.has(info.type.name)) {
      dtype = info.type.name as WeightDType
      bytes = await this.file.readBytes(info.name)
    } else {
      const data = await this.file.readFloat32(info.name)
      dtype = 'F32'
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    }
    const heads = this.rotaryHeads(info.name)
    if (heads != null) bytes = unpermuteRows(bytes, info.shape[0], heads)
    return { name, dtype, shape: [...info.shape], bytes }
  }

  protected async storedRange (name: string): Promise<{ begin: number, end: number }> { return this.info(name) }

  protected refusal (message: string): Error { return new GgufError(`${this.file.name}: ${message}`) }

  async tokenizer (): Promise<TextTokenizer | undefined> { return ggufTokenizer(this.file) }

  async tokenizerConfig (): Promise<Record<string, unknown> | undefined> { return ggufTokenizerConfig(this.file) }

  async close (): Promise<void> { await this.file.close() }

  private rotaryHeads (ggufName: string): number | undefined {
    if (!this.permuted) return undefined
    if (/^blk\.\d+\.attn_q\.(weight|bias)$/.test(ggufName)) return this.config.numHeads
    if (/^blk\.\d+\.attn_k\.(weight|bias)$/.test(ggufName)) return this.config.numKvHeads
    return undefined
  }
}

function sameShape (a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
