import { QK8_0, Q8_0_BLOCK_BYTES, QK_K, Q4_K_BLOCK_BYTES, Q5_K_BLOCK_BYTES, Q6_K_BLOCK_BYTES } from '../quant/quantize.ts'
import type { QuantDType } from '../checkpoint.ts'
import { quantizeActI16, quantizeActQ8_K, dotQ8_0, dotQ4_K, dotQ5_K, dotQ6_K, dot16 } from './reference.ts'
import { WasmQuantMatrix } from './wasm-matrix.ts'
import type { Arena } from './arena.ts'

/**
 * Storage formats the CPU kernels read directly: ggml blocks, bf16 and f16 (rows of 8-value
 * "blocks"), and f32 (weights stored in no block format, held for the CPU engine's kernels: never
 * chosen for a float32 checkpoint's blocks, which tfjs runs).
 */
export type QuantMatrixFormat = 'q8_0' | 'q4_k' | 'q5_k' | 'q6_k' | 'bf16' | 'f16' | 'f32'

/** A linear weight W [rows, cols] held as ggml blocks, row-major; y = x · Wᵀ. */
export interface QuantMatrix {
  readonly format: QuantMatrixFormat
  readonly rows: number
  readonly cols: number
  /** what it holds: the blocks, nothing else of size rows·cols */
  readonly bytes: number
  /** y[t·rows + r] = Σ_c x[t·cols + c] · W[r][c], for t < tokens. Synchronous. */
  forward (x: Float32Array, tokens: number): Float32Array
  /** Frees the blocks; forward then throws. */
  dispose (): void
}

/** One matrix's blocks as a GGUF or quantizeQ8_0/quantizeQ4_K give them. */
export interface QuantBlocks {
  format: QuantMatrixFormat
  rows: number
  cols: number
  blocks: Uint8Array
}

/** Sizes that are not whole blocks, or blocks of the wrong length. */
export class QuantMatrixError extends RangeError {
  constructor (message: string) { super(message); this.name = 'QuantMatrixError' }
}

/** Values per block and bytes per block of each format. */
export const QUANT_BLOCK: Record<QuantMatrixFormat, { values: number, bytes: number }> = {
  q8_0: { values: QK8_0, bytes: Q8_0_BLOCK_BYTES },
  q4_k: { values: QK_K, bytes: Q4_K_BLOCK_BYTES },
  q5_k: { values: QK_K, bytes: Q5_K_BLOCK_BYTES },
  q6_k: { values: QK_K, bytes: Q6_K_BLOCK_BYTES },
  // not a ggml block: the kernel reads eight values a step, so rows must be whole eights
  bf16: { values: 8, bytes: 16 },
  f16: { values: 8, bytes: 16 },
  f32: { values: 4, bytes: 16 }
}

const FORMAT_OF: Record<string, QuantMatrixFormat> = { Q8_0: 'q8_0', Q4_K: 'q4_k', Q5_K: 'q5_k', Q6_K: 'q6_k', BF16: 'bf16', F16: 'f16' }

/** The kernel format of a stored dtype, or undefined when the kernels cannot read it. */
export function quantMatrixFormat (dtype: QuantDType | string): QuantMatrixFormat | undefined {
  return Object.hasOwn(FORMAT_OF, dtype) ? FORMAT_OF[dtype] : undefined
}

/** The byte length of a [rows, cols] matrix's blocks; throws when cols is not whole blocks. */
export function quantBlocksBytes (format: QuantMatrixFormat, rows: number, cols: number): number {
  const blk = QUANT_BLOCK[format]
  if (blk == null) throw new QuantMatrixError(`unknown quantized format ${String(format)} (expected ${Object.keys(QUANT_BLOCK).join(', ')})`)
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows <= 0 || cols <= 0) {
    throw new QuantMatrixError(`${format} matrix: bad shape [${rows}, ${cols}]`)
  }
  if (cols % blk.values !== 0) {
    throw new QuantMatrixError(`${format} matrix [${rows}, ${cols}]: a row of ${cols} values is not whole blocks of ${blk.values}`)
  }
  return rows * (cols / blk.values) * blk.bytes
}

function checkParts (parts: QuantBlocks[]): { format: QuantMatrixFormat, rows: number, cols: number } {
  if (parts.length === 0) throw new QuantMatrixError('no matrices to concatenate')
  const { format, cols } = parts[0]
  let rows = 0
  for (const p of parts) {
    if (p.format !== format || p.cols !== cols) {
      throw new QuantMatrixError(`cannot concatenate ${p.format} [${p.rows}, ${p.cols}] with ${format} [·, ${cols}]: format and cols must match`)
    }
    const want = quantBlocksBytes(p.format, p.rows, p.cols)
    if (p.blocks.byteLength !== want) {
      throw new QuantMatrixError(`${p.format} matrix [${p.rows}, ${p.cols}]: expected ${want} bytes of blocks, got ${p.blocks.byteLength}`)
    }
    rows += p.rows
  }
  return { format, rows, cols }
}

/** W [rows, cols] from its blocks (copied: the caller's array can be dropped). */
export function quantMatrix (format: QuantMatrixFormat, rows: number, cols: number, blocks: Uint8Array): WasmQuantMatrix {
  return concatRows([{ format, rows, cols, blocks }])
}

/** The rows of several matrices of equal cols and format, one after another (fused q/k/v, gate/up). */
export function concatRows (parts: QuantBlocks[], near?: Arena): WasmQuantMatrix {
  const { format, rows, cols } = checkParts(parts)
  return new WasmQuantMatrix(format, rows, cols, quantBlocksBytes(format, rows, cols), parts, near)
}

/** The plain JS kernels (reference.ts): slow, kept for tests and as the definition. */
export class ScalarQuantMatrix implements QuantMatrix {
  readonly format: QuantMatrixFormat
  readonly rows: number
  readonly cols: number
  private blocks: Uint8Array | undefined

  constructor (format: QuantMatrixFormat, rows: number, cols: number, parts: QuantBlocks[]) {
    this.format = format
    this.rows = rows
    this.cols = cols
    const blocks = new Uint8Array(quantBlocksBytes(format, rows, cols))
    let o = 0
    for (const p of parts) { blocks.set(p.blocks, o); o += p.blocks.byteLength }
    this.blocks = blocks
  }

  get bytes (): number { return this.blocks?.byteLength ?? 0 }

  forward (x: Float32Array, tokens: number): Float32Array {
    const w = this.blocks
    if (w == null) throw new QuantMatrixError(`${this.format} matrix [${this.rows}, ${this.cols}] used after dispose`)
    checkInput(this, x, tokens)
    const { values, bytes } = QUANT_BLOCK[this.format]
    const nb = this.cols / values
    const y = new Float32Array(tokens * this.rows)
    if (this.format === 'bf16' || this.format === 'f16' || this.format === 'f32') {
      const f32 = new Float32Array(w.buffer, w.byteOffset, w.byteLength >> 2)
      for (let t = 0; t < tokens; t++) {
        for (let r = 0; r < this.rows; r++) {
          y[t * this.rows + r] = this.format === 'f32' ? dotF32(f32, r * this.cols, x, t * this.cols, this.cols) : dot16(this.format, w, r * this.cols, x, t * this.cols, this.cols)
        }
      }
      return y
    }
    const a = this.format === 'q8_0' ? quantizeActI16(x) : quantizeActQ8_K(x)
    const dot = { q8_0: dotQ8_0, q4_k: dotQ4_K, q5_k: dotQ5_K, q6_k: dotQ6_K }[this.format]
    for (let t = 0; t < tokens; t++) {
      for (let r = 0; r < this.rows; r++) y[t * this.rows + r] = dot(w, r * nb * bytes, a, t * nb, nb)
    }
    return y
  }

  dispose (): void { this.blocks = undefined }
}

function dotF32 (w: Float32Array, wo: number, x: Float32Array, xo: number, n: number): number {
  let s = 0
  for (let i = 0; i < n; i++) s += w[wo + i] * x[xo + i]
  return s
}

export function checkInput (m: QuantMatrix, x: Float32Array, tokens: number): void {
  if (!Number.isInteger(tokens) || tokens <= 0 || x.length !== tokens * m.cols) {
    throw new QuantMatrixError(`${m.format} matrix [${m.rows}, ${m.cols}]: input of ${x.length} values is not ${tokens} tokens of ${m.cols}`)
  }
}
