import type { ModelConfig } from '../config.ts'
import { rawFloat32 } from '../checkpoint.ts'
import type { RawTensor } from '../checkpoint.ts'
import { rotaryTables } from '../rope.ts'
import { mlpChunkRows, formatRuns, blockTensors, qkvBias } from '../block.ts'
import type { Arena } from './arena.ts'
import { concatRows, quantMatrixFormat } from './quant-matrix.ts'
import type { WasmQuantMatrix } from './wasm-matrix.ts'
import { CpuKVStore } from './kv-store.ts'
import { attentionThreads, kernelThreads, splitHeads } from './threads.ts'

// The block forward on the CPU kernels, for spans whose weights are stored in a kernel format
// (q8_0, q4_K, q5_K, q6_K, bf16): every operation of every block of a step runs in wasm over the
// arena's memory (ops.c, kernels.c), the residual stream stays there between blocks, and only the
// span's output is copied out. The tfjs block forward (block.ts) costs ~40 dispatches a block,
// which on a small model weighed more than the matrix products themselves.

/** One block's weights in the arena: norms (and Qwen2's q/k/v bias) as float32, linears as stored. */
interface CpuBlock {
  /** where the block's activations live: the arena of its first linear */
  home: Arena
  inputNorm: number
  postNorm: number
  qkvBias?: number
  /** small float32 vectors allocated in `home` */
  vectors: Array<{ at: number, bytes: number }>
  qkv: WasmQuantMatrix[]
  out: WasmQuantMatrix[]
  gateUp: WasmQuantMatrix[]
  down: WasmQuantMatrix[]
}

/** One session's rows in a (batched) step. */
export interface CpuStep { hidden: Float32Array, tokens: number, store: CpuKVStore, length: number }

/** A step's activations in one arena, carved from the engine's scratch there. */
interface Layout {
  x: number, h: number, qkv: number, att: number, gu: number, act: number, part: number,
  mm: number, cos: number, sin: number, work: number
}

const up = (n: number): number => Math.ceil(n / 64) * 64

/** Whether a block's tensors are stored in a format the CPU kernels read (then this engine runs it). */
export function cpuEngineAccepts (raws: RawTensor[]): boolean {
  return raws.some(r => /_proj\.weight$/.test(r.name) && quantMatrixFormat(r.dtype) != null)
}

/**
 * Consecutive weights in one kernel format become one matrix (q/k/v and gate/up fused); others
 * (a GGUF's Q4_0, an F16 tensor in a bf16 file) are widened to float32 rows for matmul_f32.
 */
function loadLinear (parts: RawTensor[], near?: Arena): WasmQuantMatrix[] {
  const made: WasmQuantMatrix[] = []
  try {
    for (const run of formatRuns(parts)) {
      const format = run.format ?? 'f32'
      made.push(concatRows(run.parts.map(p => {
        const blocks = format === 'f32' && p.dtype !== 'F32' ? new Uint8Array(rawFloat32(p).buffer) : p.bytes
        return { format, rows: p.shape[0], cols: p.shape[1], blocks }
      }), near))
    }
  } catch (err) {
    for (const m of made) m.dispose()
    throw err
  }
  return made
}

export class CpuSpanEngine {
  private readonly cfg: ModelConfig
  private readonly invFreq: Float64Array
  private readonly blocks: CpuBlock[] = []
  /** this engine's activations in each arena it runs blocks in */
  private readonly scratch = new Map<Arena, { at: number, bytes: number }>()
  /** room to attend in an arena holding a session's cache but not its block (kept apart: the step's layouts stay put) */
  private readonly attendScratch = new Map<Arena, { at: number, bytes: number }>()

  constructor (cfg: ModelConfig, invFreq: Float64Array) {
    for (const [what, n] of [['hidden_size', cfg.hiddenSize], ['intermediate_size', cfg.intermediateSize], ['head_dim', cfg.headDim]] as const) {
      if (n % 4 !== 0) throw new Error(`the CPU engine needs ${what} to be a multiple of 4 (got ${n})`)
    }
    this.cfg = cfg
    this.invFreq = invFreq
  }

  addBlock (block: number, raws: RawTensor[]): void {
    const get = blockTensors(block, raws)
    const b: Partial<CpuBlock> & { vectors: CpuBlock['vectors'] } = { vectors: [] }
    try {
      b.qkv = loadLinear(['q', 'k', 'v'].map(x => get(`self_attn.${x}_proj.weight`)))
      const home = b.qkv[0].arena
      b.home = home
      b.out = loadLinear([get('self_attn.o_proj.weight')], home)
      b.gateUp = loadLinear([get('mlp.gate_proj.weight'), get('mlp.up_proj.weight')], home)
      b.down = loadLinear([get('mlp.down_proj.weight')], home)
      const vector = (values: Float32Array): number => {
        const at = home.alloc(values.byteLength)
        if (at === undefined) throw new RangeError(`block ${block}: no room for its norms beside its weights in a 4 GiB wasm memory`)
        b.vectors.push({ at, bytes: values.byteLength })
        new Float32Array(home.memory.buffer, at, values.length).set(values)
        return at
      }
      b.inputNorm = vector(rawFloat32(get('input_layernorm.weight')))
      b.postNorm = vector(rawFloat32(get('post_attention_layernorm.weight')))
      if (this.cfg.qkvBias) b.qkvBias = vector(qkvBias(get))
    } catch (err) {
      disposeBlock(b)
      throw err
    }
    this.blocks.push(b as CpuBlock)
  }

  /** Bytes of the blocks' weights: the stored blocks, norms as float32. */
  get weightBytes (): number {
    let n = 0
    for (const b of this.blocks) {
      for (const m of [...b.qkv, ...b.out, ...b.gateUp, ...b.down]) n += m.bytes
      for (const v of b.vectors) n += v.bytes
    }
    return n
  }

  /** A session's cache for `blocks` blocks from `from` (relative to the span), each beside its block. */
  newStore (from: number, blocks: number, maxLength: number): CpuKVStore {
    const homes = this.blocks.slice(from, from + blocks).map(b => b.home)
    return new CpuKVStore(homes, this.cfg.numKvHeads, this.cfg.headDim, maxLength)
  }

  /** Runs the steps' rows through blocks `[from, from + blocks)`; the stores are extended, their lengths not. */
  forward (steps: CpuStep[], from: number, blocks: number): Float32Array {
    const cfg = this.cfg
    const H = cfg.hiddenSize
    const d = cfg.headDim
    const Q = cfg.numHeads * d
    const KV = cfg.numKvHeads * d
    const W = Q + 2 * KV
    const F = cfg.intermediateSize
    const R = steps.reduce((n, s) => n + s.tokens, 0)
    const chunk = Math.min(R, mlpChunkRows(cfg))
    const keys = steps.reduce((n, s) => Math.max(n, s.length + s.tokens), 0)
    const positions: number[] = []
    for (const s of steps) {
      s.store.reserve(s.length + s.tokens, s.length)
      for (let t = 0; t < s.tokens; t++) positions.push(s.length + t)
    }
    const { cos, sin } = rotaryTables(this.invFreq, positions)
    const scale = Math.fround(1 / Math.sqrt(d))
    // one layout per arena for the whole step, its products' scratch sized for the largest block
    // there (growing it mid-step would move the residual stream)
    const mm = new Map<Arena, number>()
    for (let i = 0; i < blocks; i++) {
      const b = this.blocks[from + i]
      mm.set(b.home, Math.max(mm.get(b.home) ?? 0, productScratch(b, R, chunk)))
    }
    const layouts = new Map([...mm].map(([arena, bytes]) => [arena, this.layout(arena, R, chunk, keys, bytes)]))

    let prev: { arena: Arena, x: number } | undefined
    for (let i = 0; i < blocks; i++) {
      const b = this.blocks[from + i]
      const arena = b.home
      const k = arena.kernels
      const L = layouts.get(arena)!
      const mem = (): ArrayBuffer => arena.memory.buffer as ArrayBuffer
      if (prev == null) {
        let o = 0
        for (const s of steps) { new Float32Array(mem(), L.x + 4 * o * H, s.tokens * H).set(s.hidden); o += s.tokens }
      } else if (prev.arena !== arena) {
        new Float32Array(mem(), L.x, R * H).set(new Float32Array(prev.arena.memory.buffer, prev.x, R * H))
      }
      if (prev == null || prev.arena !== arena) {
        new Float32Array(mem(), L.cos, R * d).set(cos)
        new Float32Array(mem(), L.sin, R * d).set(sin)
      }

      // attention: x += O · attend(rope(Q·norm(x)), cache + rope(K·norm(x)), cache + V·norm(x))
      k.rms_norm(L.x, b.inputNorm, L.h, H, R, cfg.rmsNormEps)
      this.linear(b, b.qkv, L, L.h, R, L.qkv, W)
      if (b.qkvBias != null) k.add_rows(L.qkv, W, b.qkvBias, 0, W, R)
      k.rope(L.qkv, W, cfg.numHeads, d, R, L.cos, L.sin)
      k.rope(L.qkv + 4 * Q, W, cfg.numKvHeads, d, R, L.cos, L.sin)
      let row = 0
      for (const s of steps) {
        this.attend(b, i, s, L, L.qkv + 4 * row * W, L.att + 4 * row * Q, scale)
        row += s.tokens
      }
      this.linear(b, b.out, L, L.att, R, L.h, H)
      k.add_rows(L.x, H, L.h, H, H, R)

      // MLP, in chunks of rows: x += down(silu(gate·norm(x)) ⊙ up·norm(x))
      for (let r = 0; r < R; r += chunk) {
        const n = Math.min(chunk, R - r)
        const x = L.x + 4 * r * H
        k.rms_norm(x, b.postNorm, L.h, H, n, cfg.rmsNormEps)
        this.linear(b, b.gateUp, L, L.h, n, L.gu, 2 * F)
        k.swiglu(L.gu, L.act, F, n)
        this.linear(b, b.down, L, L.act, n, L.h, H)
        k.add_rows(x, H, L.h, H, H, n)
      }
      prev = { arena, x: L.x }
    }
    return new Float32Array(prev!.arena.memory.buffer, prev!.x, R * H).slice()
  }

  /** y `[rows, width]` = x · the linear's parts side by side, all at addresses in the block's home. */
  private linear (b: CpuBlock, parts: WasmQuantMatrix[], L: Layout, x: number, rows: number, y: number, width: number): void {
    const home = b.home
    if (parts.length === 1 && parts[0].arena === home) { parts[0].forwardAt(x, rows, y, L.mm); return }
    let col = 0
    for (const p of parts) {
      if (p.arena === home) {
        p.forwardAt(x, rows, L.part, L.mm)
      } else {
        // a part that landed in another 4 GiB memory: its input and output are copied across
        const out = p.forward(new Float32Array(home.memory.buffer, x, rows * p.cols).slice(), rows)
        new Float32Array(home.memory.buffer, L.part, rows * p.rows).set(out)
      }
      home.kernels.copy_rows(L.part, p.rows, y + 4 * col, width, p.rows, rows)
      col += p.rows
    }
  }

  /** Appends one session's keys and values to block i of its cache and attends its rows. */
  private attend (b: CpuBlock, i: number, s: CpuStep, L: Layout, qkv: number, att: number, scale: number): void {
    const cfg = this.cfg
    const d = cfg.headDim
    const Q = cfg.numHeads * d
    const KV = cfg.numKvHeads * d
    const W = Q + 2 * KV
    const region = s.store.regions[i]
    const kc = s.store.keys(i)
    const vc = s.store.values(i)
    const workStride = up(4 * (d + s.length + s.tokens))
    let [a, q, out, work] = [b.home, qkv, att, L.work]
    if (region.arena !== b.home) {
      // the cache landed in another wasm memory: attend there, on copies of this session's rows
      a = region.arena
      const room = this.scratchIn(this.attendScratch, a, up(4 * s.tokens * W) + up(4 * s.tokens * Q) + kernelThreads() * workStride)
      q = room; out = room + up(4 * s.tokens * W); work = out + up(4 * s.tokens * Q)
      new Float32Array(a.memory.buffer, q, s.tokens * W).set(new Float32Array(b.home.memory.buffer, qkv, s.tokens * W))
    }
    const k = a.kernels
    k.kv_store(q + 4 * Q, W, s.tokens, cfg.numKvHeads, d, kc, s.store.cap, s.length)
    k.kv_store(q + 4 * (Q + KV), W, s.tokens, cfg.numKvHeads, d, vc, s.store.cap, s.length)
    const threads = attentionThreads(cfg.numHeads, s.tokens, s.length + s.tokens, d)
    splitHeads(a, { kernel: 'attention', q, qs: W, rows: s.tokens, first: s.length, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, d, kc, vc, cap: s.store.cap, scale, out, os: Q, work, workStride }, threads)
    if (a !== b.home) new Float32Array(b.home.memory.buffer, att, s.tokens * Q).set(new Float32Array(a.memory.buffer, out, s.tokens * Q))
  }

  /** A step's activations in `arena`, `mm` bytes of them for the products' quantized inputs. */
  private layout (arena: Arena, R: number, chunk: number, keys: number, mm: number): Layout {
    const cfg = this.cfg
    const H = cfg.hiddenSize
    const d = cfg.headDim
    const Q = cfg.numHeads * d
    const W = Q + 2 * cfg.numKvHeads * d
    const F = cfg.intermediateSize
    const sizes: Record<keyof Layout, number> = {
      x: 4 * R * H, h: 4 * R * H, qkv: 4 * R * W, att: 4 * R * Q, gu: 4 * chunk * 2 * F, act: 4 * chunk * F,
      part: 4 * Math.max(R * W, chunk * 2 * F, R * H), mm, cos: 4 * R * d, sin: 4 * R * d, work: kernelThreads() * up(4 * (d + keys))
    }
    let at = this.scratchIn(this.scratch, arena, Object.values(sizes).reduce((n, v) => n + up(v), 0))
    const L = {} as Record<string, number>
    for (const [name, bytes] of Object.entries(sizes)) { L[name] = at; at += up(bytes) }
    return L as unknown as Layout
  }

  /** This engine's region of `arena` in `regions`, at least `bytes` (its contents are not kept on growth). */
  private scratchIn (regions: Map<Arena, { at: number, bytes: number }>, arena: Arena, bytes: number): number {
    const have = regions.get(arena)
    if (have != null && have.bytes >= bytes) return have.at
    if (have != null) arena.release(have.at, have.bytes)
    regions.delete(arena)
    const size = Math.max(bytes, (have?.bytes ?? 0) * 2)
    const at = arena.alloc(size)
    if (at === undefined) throw new RangeError(`no room for a step's ${size} bytes of activations in a 4 GiB wasm memory`)
    regions.set(arena, { at, bytes: size })
    return at
  }

  dispose (): void {
    for (const b of this.blocks) disposeBlock(b)
    this.blocks.length = 0
    for (const regions of [this.scratch, this.attendScratch]) {
      for (const [arena, s] of regions) arena.release(s.at, s.bytes)
      regions.clear()
    }
  }
}

/** Scratch the block's products need for their quantized inputs. */
function productScratch (b: CpuBlock, R: number, chunk: number): number {
  return Math.max(...b.qkv.map(p => p.scratchBytes(R)), ...b.out.map(p => p.scratchBytes(R)),
    ...b.gateUp.map(p => p.scratchBytes(chunk)), ...b.down.map(p => p.scratchBytes(chunk)))
}

function disposeBlock (b: Partial<CpuBlock> & { vectors: CpuBlock['vectors'] }): void {
  for (const m of [...b.qkv ?? [], ...b.out ?? [], ...b.gateUp ?? [], ...b.down ?? []]) m.dispose()
  for (const v of b.vectors) b.home?.release(v.at, v.bytes)
  b.vectors.length = 0
}
