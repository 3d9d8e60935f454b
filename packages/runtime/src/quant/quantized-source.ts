import type { ModelSource } from '../model-source.ts'
import type { RawTensor, QuantDType } from '../checkpoint.ts'
import { rawFloat32 } from '../checkpoint.ts'
import { CheckpointError, toFloat32 } from '../safetensors.ts'
import { tensorsDigest } from '../model-id.ts'
import { quantizeQ8_0, QK8_0, QK_K, Q8_0_BLOCK_BYTES, Q4_K_BLOCK_BYTES } from './quantize.ts'
import { quantizeQ4_K } from '../cpu/quantize-blocks.ts'

/** `--quantize` formats: llama.cpp's names, lower case. */
export const QUANT_FORMATS = ['q8_0', 'q4_k'] as const
export type QuantFormat = typeof QUANT_FORMATS[number]

export function isQuantFormat (s: unknown): s is QuantFormat {
  return typeof s === 'string' && (QUANT_FORMATS as readonly string[]).includes(s)
}

/** The seven matrices of a block: the weights that dominate its bytes and its matvecs. */
const LINEAR = /\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/

/** A block's stored weights that are not the ones the model id names. */
export class WeightsMismatchError extends CheckpointError {
  constructor (message: string) { super(message, 'weights-mismatch'); this.name = 'WeightsMismatchError' }
}

/**
 * The ggml type a linear weight of row length `cols` becomes. A q4_k row must be whole 256-value
 * super-blocks; llama.cpp falls back to Q5_0 for other rows, Plexus (which has no Q5_0 kernels) to
 * Q8_0. Rows that are not whole 32-value blocks stay as stored.
 */
export function quantTypeFor (format: QuantFormat, cols: number): QuantDType | undefined {
  if (format === 'q4_k' && cols % QK_K === 0) return 'Q4_K'
  return cols % QK8_0 === 0 ? 'Q8_0' : undefined
}

/** Values widened to float32 at a time: a tensor is never held as float32 whole (a bf16 one would take 2× its bytes). */
const QUANTIZE_CHUNK = 1 << 18

/** One tensor quantized as `format` quantizes it; norms, biases and already-quantized tensors pass through. */
export function quantizeTensor (t: RawTensor, format: QuantFormat): RawTensor {
  if (!LINEAR.test(t.name) || t.shape.length !== 2 || !(t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16')) return t
  const dtype = quantTypeFor(format, t.shape[1])
  if (dtype == null) return t
  const [values, blockBytes, quantize] = dtype === 'Q4_K' ? [QK_K, Q4_K_BLOCK_BYTES, quantizeQ4_K] : [QK8_0, Q8_0_BLOCK_BYTES, quantizeQ8_0]
  const size = t.dtype === 'F32' ? 4 : 2
  const n = t.shape[0] * t.shape[1]
  const bytes = new Uint8Array(n / values * blockBytes)
  // rows are whole blocks, and so is every chunk
  for (let v = 0; v < n; v += QUANTIZE_CHUNK) {
    const m = Math.min(QUANTIZE_CHUNK, n - v)
    bytes.set(quantize(toFloat32(t.bytes.subarray(v * size, (v + m) * size), t.dtype)), v / values * blockBytes)
  }
  return { name: t.name, dtype, shape: t.shape, bytes }
}

/**
 * A model source whose blocks' linear weights are quantized at load with llama.cpp's reference
 * quantizers (`--quantize`); everything else (norms, biases, embeddings, LM head) reads as stored.
 * Quantizing is deterministic, so nodes given the same weights and format serve the same model:
 * its manifest (loadManifest) is the stored model's with a derived id.
 */
export class QuantizedSource implements ModelSource {
  readonly base: ModelSource
  readonly quantize: QuantFormat

  constructor (base: ModelSource, quantize: QuantFormat) {
    if (base instanceof QuantizedSource) throw new TypeError('a quantized model source cannot be quantized again')
    this.base = base
    this.quantize = quantize
  }

  get format (): ModelSource['format'] { return this.base.format }
  get path (): string { return this.base.path }
  get name (): string { return `${this.base.name}:${this.quantize}` }
  get config (): ModelSource['config'] { return this.base.config }

  has (name: string): boolean { return this.base.has(name) }

  async readRaw (name: string, expectedShape?: number[]): Promise<RawTensor> {
    return quantizeTensor(await this.base.readRaw(name, expectedShape), this.quantize)
  }

  async readFloat32 (name: string, expectedShape?: number[]): Promise<Float32Array> {
    return rawFloat32(await this.readRaw(name, expectedShape))
  }

  /**
   * The block's tensors, quantized. `digest` (the manifest's, which names the weights as stored)
   * makes the read check the stored tensors before quantizing them.
   */
  async readBlockRaw (block: number): Promise<RawTensor[]> { return await readBlockChecked(this, block) }

  async readHeadRaw (): Promise<RawTensor[]> { return await this.base.readHeadRaw() }
  checkBlock (block: number): void { this.base.checkBlock(block) }
  async storedBytes (names: string[]): Promise<number> { return await this.base.storedBytes(names) }
  async tokenizer (): ReturnType<ModelSource['tokenizer']> { return await this.base.tokenizer() }
  async tokenizerConfig (): ReturnType<ModelSource['tokenizerConfig']> { return await this.base.tokenizerConfig() }
  async close (): Promise<void> { await this.base.close() }
}

/**
 * Block `block`'s tensors as a span holds them: the stored tensors, checked against the
 * manifest's `digest` (which names them as stored), then quantized when `src` quantizes.
 */
export async function readBlockChecked (src: ModelSource, block: number, digest?: string): Promise<RawTensor[]> {
  const stored = await storedSource(src).readBlockRaw(block)
  if (digest != null) {
    const got = await tensorsDigest(stored)
    if (got !== digest) throw new WeightsMismatchError(`block ${block}'s weights do not match the model id (digest ${got.slice(0, 12)}, manifest says ${digest.slice(0, 12)})`)
  }
  const format = quantizationOf(src)
  return format == null ? stored : stored.map(t => quantizeTensor(t, format))
}

/** `src` quantized as `format`, or `src` itself without one. */
export function withQuantization (src: ModelSource, format: QuantFormat | undefined): ModelSource {
  return format == null ? src : new QuantizedSource(src, format)
}

/** The format a source quantizes to, if any. */
export function quantizationOf (src: ModelSource): QuantFormat | undefined {
  return src instanceof QuantizedSource ? src.quantize : undefined
}

/** The source as stored (what serves the client parts' files). */
export function storedSource (src: ModelSource): ModelSource {
  return src instanceof QuantizedSource ? src.base : src
}

/** Bytes per weight of each storage format (ggml block formats: block bytes / block size). */
const BYTES_PER_WEIGHT: Record<string, number> = {
  f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32, q4_k: 144 / 256, q5_k: 176 / 256, q6_k: 210 / 256
}

/**
 * How the blocks' linear weights are held: the --quantize format, else the stored type of
 * block 0's q projection, lowercase (f32, bf16, q8_0, q4_k …). Read once, at start-up.
 */
export async function weightFormat (src: ModelSource): Promise<string> {
  const q = quantizationOf(src)
  if (q != null) return q
  return (await storedSource(src).readRaw('model.layers.0.self_attn.q_proj.weight')).dtype.toLowerCase()
}

/** Bytes per weight in `format` (4 for a format this does not know: float32 is the worst case). */
export function bytesPerWeight (format: string): number { return BYTES_PER_WEIGHT[format] ?? 4 }
