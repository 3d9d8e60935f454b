import { readFileSync } from 'node:fs'
import { halfTable } from '../dtype.ts'
import { wasm } from './wasm-api.ts'
import type { WasmMemory, WasmModule } from './wasm-api.ts'

// One shared WebAssembly.Memory with the kernels instantiated over it, and a first-fit allocator
// for the blocks placed in it. wasm32 addresses 4 GiB, so a process holding more blocks opens
// another arena. The memory is shared so that worker threads can run the same kernels over the
// same weights (threads.ts).

const PAGE = 65536
const MAX_PAGES = 65536
/** The module's own stack and data (none used; see kernels.c) live below this. */
const RESERVED = 65536
const ALIGN = 64

export interface KernelExports {
  quantize_i16: (x: number, q: number, d: number, n: number) => void
  quantize_q8_K: (x: number, q: number, d: number, bs: number, n: number) => void
  matmul_q8_0: (w: number, rows: number, cols: number, xq: number, xd: number, tokens: number, y: number, r0: number, r1: number, half: number) => void
  matmul_q4_K: (w: number, rows: number, cols: number, xq: number, xd: number, xbs: number, tokens: number, y: number, r0: number, r1: number, half: number) => void
  matmul_q5_K: (w: number, rows: number, cols: number, xq: number, xd: number, xbs: number, tokens: number, y: number, r0: number, r1: number, half: number) => void
  matmul_q6_K: (w: number, rows: number, cols: number, xq: number, xd: number, xbs: number, tokens: number, y: number, r0: number, r1: number, half: number) => void
  matmul_bf16: (w: number, rows: number, cols: number, x: number, tokens: number, y: number, r0: number, r1: number) => void
  matmul_f16: (w: number, rows: number, cols: number, x: number, tokens: number, y: number, r0: number, r1: number) => void
  matmul_f32: (w: number, rows: number, cols: number, x: number, tokens: number, y: number, r0: number, r1: number) => void
  // block operations (ops.c)
  rms_norm: (x: number, w: number, y: number, n: number, rows: number, eps: number) => void
  add_rows: (x: number, xs: number, y: number, ys: number, n: number, rows: number) => void
  copy_rows: (src: number, ss: number, dst: number, ds: number, n: number, rows: number) => void
  rope: (x: number, xs: number, heads: number, d: number, rows: number, cos: number, sin: number) => void
  kv_store: (x: number, xs: number, rows: number, kvHeads: number, d: number, cache: number, cap: number, pos: number) => void
  attention: (q: number, qs: number, rows: number, first: number, heads: number, kvHeads: number, d: number, kc: number, vc: number, cap: number, scale: number, out: number, os: number, work: number, h0: number, h1: number) => void
  swiglu: (gu: number, act: number, f: number, rows: number) => void
  // llama.cpp's q4_K quantizer (quantize.c)
  quantize_q4_K: (x: number, y: number, b0: number, b1: number, half: number, work: number) => void
}

let module: WasmModule | undefined
/**
 * Which build runs: with relaxed SIMD (the k-quants' pmaddubsw) where the engine has it (V8 ≥
 * 11.4, Node 22+), else plain SIMD128; PLEXUS_CPU_KERNELS=simd128 forces the latter. Both give
 * the same bits.
 */
export let kernelsBuild: 'relaxed-simd' | 'simd128' | undefined
export function kernelsModule (): WasmModule {
  if (module != null) return module
  const relaxed = readFileSync(new URL('./kernels-relaxed.wasm', import.meta.url))
  kernelsBuild = process.env.PLEXUS_CPU_KERNELS !== 'simd128' && wasm.validate(relaxed) ? 'relaxed-simd' : 'simd128'
  module = new wasm.Module(kernelsBuild === 'relaxed-simd' ? relaxed : readFileSync(new URL('./kernels.wasm', import.meta.url)))
  return module
}

export function instantiate (memory: WasmMemory): KernelExports {
  return new wasm.Instance(kernelsModule(), { env: { memory } }).exports as unknown as KernelExports
}

export class Arena {
  readonly id: number
  readonly memory: WasmMemory
  readonly kernels: KernelExports
  /** f16 bits → f32, the table the kernels read block scales through */
  readonly half: number
  private top: number
  /** free ranges below `top`, sorted by address, never adjacent */
  private readonly free: Array<{ at: number, size: number }> = []

  constructor (id: number) {
    this.id = id
    this.memory = new wasm.Memory({ initial: (RESERVED + 65536 * 4) / PAGE, maximum: MAX_PAGES, shared: true })
    this.kernels = instantiate(this.memory)
    this.half = RESERVED
    new Float32Array(this.memory.buffer, this.half, 65536).set(halfTable())
    this.top = RESERVED + 65536 * 4
  }

  /** `size` bytes at a 64-byte aligned address, or undefined when the arena cannot hold them. */
  alloc (size: number): number | undefined {
    size = Math.ceil(Math.max(size, 1) / ALIGN) * ALIGN
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]
      if (f.size < size) continue
      const at = f.at
      if (f.size === size) this.free.splice(i, 1)
      else { f.at += size; f.size -= size }
      return at
    }
    const end = this.top + size
    if (end > MAX_PAGES * PAGE) return undefined
    const have = this.memory.buffer.byteLength
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE))
    const at = this.top
    this.top = end
    return at
  }

  release (at: number, size: number): void {
    size = Math.ceil(Math.max(size, 1) / ALIGN) * ALIGN
    let i = 0
    while (i < this.free.length && this.free[i].at < at) i++
    // a range freed twice (or one that overlaps a free one) would be handed out twice
    const before = this.free[i - 1]
    const after = this.free[i]
    if (at < RESERVED || at + size > this.top || (before != null && before.at + before.size > at) || (after != null && at + size > after.at)) {
      throw new RangeError(`arena ${this.id}: releasing [${at}, ${at + size}) that is not allocated`)
    }
    this.free.splice(i, 0, { at, size })
    // merge with the neighbours, then give the last range back to `top`
    if (i + 1 < this.free.length && this.free[i].at + this.free[i].size === this.free[i + 1].at) {
      this.free[i].size += this.free[i + 1].size
      this.free.splice(i + 1, 1)
    }
    if (i > 0 && this.free[i - 1].at + this.free[i - 1].size === this.free[i].at) {
      this.free[i - 1].size += this.free[i].size
      this.free.splice(i, 1)
    }
    const last = this.free[this.free.length - 1]
    if (last != null && last.at + last.size === this.top) { this.top = last.at; this.free.pop() }
  }

  private scratchAt = 0
  private scratchSize = 0
  /** Room for one forward's activations and results, reused (callers are synchronous). */
  scratch (size: number): number {
    if (size <= this.scratchSize) return this.scratchAt
    if (this.scratchSize > 0) this.release(this.scratchAt, this.scratchSize)
    const at = this.alloc(size)
    if (at === undefined) throw new RangeError(`no room for ${size} bytes of activations in a 4 GiB wasm memory`)
    this.scratchAt = at
    this.scratchSize = size
    return at
  }
}

const arenas: Arena[] = []

/** Room for `size` bytes in `near` when it has it, else in the first arena that has it (a new one when none has). */
export function allocate (size: number, near?: Arena): { arena: Arena, at: number } {
  if (size > MAX_PAGES * PAGE - RESERVED - 65536 * 4) throw new RangeError(`${size} bytes do not fit one wasm memory (4 GiB)`)
  const there = near?.alloc(size)
  if (near != null && there !== undefined) return { arena: near, at: there }
  for (const arena of arenas) {
    const at = arena.alloc(size)
    if (at !== undefined) return { arena, at }
  }
  const arena = new Arena(arenas.length)
  arenas.push(arena)
  const at = arena.alloc(size)
  if (at === undefined) throw new RangeError(`${size} bytes do not fit a new wasm memory`)
  return { arena, at }
}

export function allArenas (): readonly Arena[] { return arenas }
