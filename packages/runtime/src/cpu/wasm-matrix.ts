import { allocate } from './arena.ts'
import type { Arena } from './arena.ts'
import { QUANT_BLOCK, QuantMatrixError, checkInput } from './quant-matrix.ts'
import type { QuantMatrix, QuantMatrixFormat, QuantBlocks } from './quant-matrix.ts'
import { splitRows } from './threads.ts'

const up = (n: number): number => Math.ceil(n / 64) * 64
/** Weights in a float format multiply float32 activations as they are. */
const isFloat = (f: QuantMatrixFormat): f is 'bf16' | 'f16' | 'f32' => f === 'bf16' || f === 'f16' || f === 'f32'
/** The kernel of each k-quant format (q8_K activations). */
const KQUANT_KERNEL: Record<string, 'q4_K' | 'q5_K' | 'q6_K'> = { q4_k: 'q4_K', q5_k: 'q5_K', q6_k: 'q6_K' }

/** W's blocks in a wasm memory, multiplied by the SIMD128 kernels of kernels.c. */
export class WasmQuantMatrix implements QuantMatrix {
  readonly format: QuantMatrixFormat
  readonly rows: number
  readonly cols: number
  readonly bytes: number
  /** the wasm memory holding the blocks: inputs of forwardAt live there too */
  readonly arena: Arena
  private at: number | undefined

  /** `near`: the arena to place the blocks in when it has room (a block's other weights). */
  constructor (format: QuantMatrixFormat, rows: number, cols: number, bytes: number, parts: QuantBlocks[], near?: Arena) {
    this.format = format
    this.rows = rows
    this.cols = cols
    this.bytes = bytes
    const { arena, at } = allocate(bytes, near)
    this.arena = arena
    this.at = at
    const mem = arena.memory.buffer
    let o = at
    for (const p of parts) { new Uint8Array(mem, o, p.blocks.byteLength).set(p.blocks); o += p.blocks.byteLength }
  }

  forward (x: Float32Array, tokens: number): Float32Array {
    checkInput(this, x, tokens)
    const { rows, cols, arena } = this
    const n = tokens * cols
    const xf = arena.scratch(up(4 * n) + up(4 * tokens * rows) + this.scratchBytes(tokens))
    const y = xf + up(4 * n)
    new Float32Array(arena.memory.buffer, xf, n).set(x)
    this.forwardAt(xf, tokens, y, y + up(4 * tokens * rows))
    return new Float32Array(arena.memory.buffer, y, tokens * rows).slice()
  }

  /** Bytes of scratch forwardAt needs for `tokens` rows: the activations as the kernel reads them. */
  scratchBytes (tokens: number): number {
    if (isFloat(this.format)) return 0
    const n = tokens * this.cols
    const nb = this.cols / QUANT_BLOCK[this.format].values
    // quantized values (int16 for q8_0 weights, int8 q8_K for the k-quants), one f32 scale per block, q8_K's int16 sums (16 per block)
    return up(2 * n) + up(4 * tokens * nb) + up(32 * tokens * nb)
  }

  /**
   * y = x · Wᵀ with x `[tokens, cols]` f32 at `xf` and y `[tokens, rows]` at `y`, both in this
   * matrix's arena, and `scratch` (scratchBytes(tokens) there) for the quantized activations.
   */
  forwardAt (xf: number, tokens: number, y: number, scratch: number): void {
    const w = this.at
    if (w === undefined) throw new QuantMatrixError(`${this.format} matrix [${this.rows}, ${this.cols}] used after dispose`)
    const { rows, cols, arena } = this
    if (isFloat(this.format)) {
      // float32 activations as they are: the kernel widens the weights, nothing is quantized
      splitRows(arena, { kernel: this.format, w, rows, cols, xq: xf, xd: 0, xbs: 0, tokens, y })
      return
    }
    const n = tokens * cols
    const nb = cols / QUANT_BLOCK[this.format].values
    const xq = scratch
    const xd = xq + up(2 * n)
    const xbs = xd + up(4 * tokens * nb)
    const k = arena.kernels
    if (this.format === 'q8_0') {
      k.quantize_i16(xf, xq, xd, n)
      splitRows(arena, { kernel: 'q8_0', w, rows, cols, xq, xd, xbs, tokens, y })
    } else {
      k.quantize_q8_K(xf, xq, xd, xbs, n)
      splitRows(arena, { kernel: KQUANT_KERNEL[this.format], w, rows, cols, xq, xd, xbs, tokens, y })
    }
  }

  dispose (): void {
    if (this.at === undefined) return
    this.arena.release(this.at, this.bytes)
    this.at = undefined
  }
}
