import { allocate } from './arena.ts'
import { kernelThreads, splitBlocks } from './threads.ts'
import { QK_K, Q4_K_BLOCK_BYTES, QuantizeError } from '../quant/quantize.ts'

// `--quantize q4_k` and the GGUF writer quantize on the kernel threads: llama.cpp's algorithm
// searches 21 candidate scales per 32 values (~220 float operations a weight), 1.5 M values/s in
// JavaScript on one core, 78 min for an 8B model's blocks. quantize.c runs the same float
// operations at 7.8 M values/s a thread, on every core (bench:quantize: 14.8 on 2 cores).

/**
 * Values staged into wasm memory at a time: 1 MiB of float32 in, 144 KiB of blocks out (small: a
 * node's memory keeps whatever pages the staging touched).
 */
const CHUNK = 1 << 18
/** Each thread's room for the arrays llama.cpp keeps on its stack (quantize.c: 480 bytes). */
const WORK = 512

/**
 * quantize_row_q4_K_ref over `x` (whole super-blocks of 256; any number of rows): llama.cpp's
 * bytes, the same as quantizeQ4_KScalar's, on every kernel thread.
 */
export function quantizeQ4_K (x: Float32Array): Uint8Array {
  if (x.length % QK_K !== 0) throw new QuantizeError(`q4_K: ${x.length} values are not whole blocks of ${QK_K}`)
  const blocks = x.length / QK_K
  const out = new Uint8Array(blocks * Q4_K_BLOCK_BYTES)
  if (blocks === 0) return out
  const chunk = Math.min(CHUNK, x.length)
  const outBytes = chunk / QK_K * Q4_K_BLOCK_BYTES
  const size = 4 * chunk + outBytes + WORK * kernelThreads()
  const { arena, at } = allocate(size)
  try {
    const y = at + 4 * chunk
    const work = y + outBytes
    for (let v = 0; v < x.length; v += chunk) {
      const n = Math.min(chunk, x.length - v)
      new Float32Array(arena.memory.buffer, at, n).set(x.subarray(v, v + n))
      splitBlocks(arena, { kernel: 'quantize_q4_K', x: at, y, blocks: n / QK_K, work, workStride: WORK })
      out.set(new Uint8Array(arena.memory.buffer, y, n / QK_K * Q4_K_BLOCK_BYTES), v / QK_K * Q4_K_BLOCK_BYTES)
    }
  } finally {
    arena.release(at, size)
  }
  return out
}
