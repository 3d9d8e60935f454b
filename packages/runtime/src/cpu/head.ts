import type { RawTensor } from '../checkpoint.ts'
import { rawFloat32 } from '../checkpoint.ts'
import { concatRows, quantMatrixFormat } from './quant-matrix.ts'

/** What the CPU LM head is built from: the final norm and the LM head as stored, `[vocab, hidden]`. */
export interface CpuHeadWeights {
  hiddenSize: number
  vocabSize: number
  rmsNormEps: number
  norm: Float32Array
  lmHead: Pick<RawTensor, 'dtype' | 'shape' | 'bytes'>
}

const up = (n: number): number => Math.ceil(n / 64) * 64

/**
 * The LM head on the CPU kernels: the final norm, then logits `[rows, vocab]` from the LM head in
 * its stored format (q8_0, a k-quant, bf16; anything else widened to float32 rows), split across
 * the kernel threads. Rows give bitwise the logits each would get alone, so rows batched from
 * several sessions change nothing. Synchronous: a worker thread runs it for clients that relay.
 */
export function cpuHead (w: CpuHeadWeights): { logits: (x: Float32Array, rows: number) => Float32Array, dispose: () => void } {
  const H = w.hiddenSize
  const V = w.vocabSize
  const format = quantMatrixFormat(w.lmHead.dtype) ?? 'f32'
  const blocks = format === 'f32' && w.lmHead.dtype !== 'F32' ? new Uint8Array(rawFloat32(w.lmHead).buffer) : w.lmHead.bytes
  const matrix = concatRows([{ format, rows: V, cols: H, blocks }])
  const arena = matrix.arena
  const normAt = arena.alloc(4 * H)
  if (normAt === undefined) { matrix.dispose(); throw new RangeError('no room for the final norm beside the LM head in a 4 GiB wasm memory') }
  new Float32Array(arena.memory.buffer, normAt, H).set(w.norm)
  const eps = w.rmsNormEps
  let disposed = false
  return {
    logits: (x, rows) => {
      if (disposed) throw new Error('the LM head was disposed')
      if (x.length !== rows * H) throw new RangeError(`hidden states have ${x.length} values, expected ${rows}×${H}`)
      // the arena's shared scratch: this call is synchronous, as every user of it is
      const xs = arena.scratch(up(4 * rows * H) + up(4 * rows * V) + matrix.scratchBytes(rows))
      const y = xs + up(4 * rows * H)
      new Float32Array(arena.memory.buffer, xs, rows * H).set(x)
      arena.kernels.rms_norm(xs, normAt, xs, H, rows, eps)
      matrix.forwardAt(xs, rows, y, y + up(4 * rows * V))
      return new Float32Array(arena.memory.buffer, y, rows * V).slice()
    },
    dispose: () => {
      if (disposed) return
      disposed = true
      arena.release(normAt, 4 * H)
      matrix.dispose()
    }
  }
}
