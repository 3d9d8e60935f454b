/// <reference types="@webgpu/types" />
import type { ModelConfig } from '../config.ts'
import { rawFloat32 } from '../checkpoint.ts'
import type { RawTensor } from '../checkpoint.ts'
import { rotaryTables } from '../rope.ts'
import type { GpuContext } from './device.ts'
import { checked } from './device.ts'
import { GpuKVPool, GpuKVStore } from './kv-store.ts'
import { GpuLinear, kernel, bindGroup, upload, storage, createStepBuffer, dispatchLinear, stepSlots, submitCommands, serially, SLOT_OFFSETS, MAX_SESSIONS_PER_STEP, MAX_STEP_BLOCKS } from './linear.ts'
import type { LinearBinding, Kernel } from './linear.ts'
import { rmsNormKernel, swigluKernel, grid, GEMM_MIN_ROWS } from './kernels.ts'
import { attentionKernel, attentionGroups, stepPaging } from './attention.ts'
import type { AttentionShape } from './attention.ts'
import { gpuKernels, fusedNorms } from './kernel-choice.ts'
import { StepPasses, stepTimer } from './profile.ts'
import type { GpuHeadTail } from './head.ts'
import type { StepTimer } from './profile.ts'

/** One block's weights on the GPU, in their stored precision (norms as f32). */
interface GpuBlock {
  inputNorm: GPUBuffer
  qkv: GpuLinear
  out: GpuLinear
  postNorm: GPUBuffer
  gateUp: GpuLinear
  down: GpuLinear
}

/** Activations of one step, for up to `rows` rows; replaced by larger ones when a step needs it. */
interface Scratch {
  rows: number
  generation: number
  x: GPUBuffer
  h: GPUBuffer
  qkv: GPUBuffer
  att: GPUBuffer
  gu: GPUBuffer
  act: GPUBuffer
  rot: GPUBuffer
  /** Rows' positions and their sessions' page tables (attention.ts), grown as steps need. */
  paging: GPUBuffer
  readback: GPUBuffer
  blocks: BlockBinding[]
  swiglu: GPUBindGroup
}

interface BlockBinding {
  norm1: GPUBindGroup
  qkv: LinearBinding
  out: LinearBinding
  norm2: GPUBindGroup
  gateUp: LinearBinding
  down: LinearBinding
  /** Decode: the input norm in the q/k/v kernel; the post-attention norm, gate/up and SwiGLU in one (where the layer is one buffer). */
  decode?: { qkv: LinearBinding, mlp?: LinearBinding }
}

/** One session's rows in a batched step. */
export interface GpuStep { hidden: Float32Array, tokens: number, store: GpuKVStore, length: number }

/** A block's attention bind group, for one page buffer and one set of scratch buffers. */
interface CacheBinding { key: string, attention: GPUBindGroup }


/**
 * The block forward on the GPU: every block of a step is recorded into one command buffer
 * (one submission per step) and only the span's output comes back to the CPU.
 */
export class GpuSpanEngine {
  private readonly gpu: GpuContext
  private readonly device: GPUDevice
  private readonly cfg: ModelConfig
  private readonly blocks: GpuBlock[] = []
  private readonly invFreq: Float64Array
  private readonly step: GPUBuffer
  private readonly k: { norm: Kernel, attention: Kernel, swiglu: Kernel }
  private readonly shape: AttentionShape
  private readonly pool: GpuKVPool
  private readonly caches: CacheBinding[] = []
  /** Commands recorded ahead for a step like the last one, and what they were recorded for. */
  private ahead?: { key: string, commands: GPUCommandBuffer }
  private scratch?: Scratch
  private generation = 0
  /** Steps run one at a time: they share the scratch buffers and the readback buffer. */
  private readonly serial = serially()
  private readonly timer?: StepTimer
  /** Decode rows' norms inside the projections (kernel-choice.ts). */
  private readonly fusedNorms = fusedNorms()

  /** Precision of the sessions' cached keys and values. */
  readonly kv: 'f32' | 'f16'

  constructor (gpu: GpuContext, cfg: ModelConfig, invFreq: Float64Array, opts: { kv?: 'f32' | 'f16' } = {}) {
    this.gpu = gpu
    this.kv = opts.kv ?? 'f32'
    this.device = gpu.device
    this.cfg = cfg
    this.invFreq = invFreq
    for (const [what, n] of [['hidden_size', cfg.hiddenSize], ['intermediate_size', cfg.intermediateSize], ['heads × head_dim', cfg.numHeads * cfg.headDim]] as const) {
      if (n % 4 !== 0) throw new Error(`the GPU kernels need ${what} to be a multiple of 4 (got ${n})`)
    }
    if (cfg.headDim % 4 !== 0) throw new Error(`the GPU kernels need head_dim to be a multiple of 4 (got ${cfg.headDim})`)
    this.step = createStepBuffer(this.device, MAX_STEP_BLOCKS + 1)
    this.timer = stepTimer(this.device, gpu.timestamps)
    const shape = { numHeads: cfg.numHeads, numKvHeads: cfg.numKvHeads, headDim: cfg.headDim, kv: this.kv }
    this.shape = shape
    this.pool = new GpuKVPool(this.device, cfg.numKvHeads * cfg.headDim, this.kv === 'f16' ? 2 : 4, gpu.limits.maxStorageBufferBindingSize)
    this.k = {
      norm: kernel(this.device, rmsNormKernel(cfg.hiddenSize, cfg.rmsNormEps), ['read', 'read', 'rw', 'step']),
      attention: kernel(this.device, attentionKernel(shape, gpuKernels(gpu.software) === 'legacy'), ['read', 'read', 'rw', 'rw', 'step', 'read']),
      swiglu: kernel(this.device, swigluKernel(cfg.intermediateSize), ['read', 'rw', 'step'])
    }
  }

  /** Uploads one block (tensors as `Checkpoint.readBlockRaw` gives them); blocks are appended in order. */
  async addBlock (block: number, raws: RawTensor[]): Promise<void> {
    // an allocation the GPU cannot hold is an error here, not garbage in the first step
    await checked(this.device, `uploading block ${block}`, () => { this.upload(block, raws) })
  }

  private upload (block: number, raws: RawTensor[]): void {
    const by = new Map(raws.map(r => [r.name.slice(`model.layers.${block}.`.length), r]))
    const get = (n: string): RawTensor => {
      const r = by.get(n)
      if (r == null) throw new Error(`block ${block}: tensor ${n} missing`)
      return r
    }
    const vec = (n: string): Float32Array => rawFloat32(get(n))
    const name = (n: string): string => `block ${block} ${n}`
    let bias: Float32Array | undefined
    if (this.cfg.qkvBias) {
      const parts = ['q', 'k', 'v'].map(x => vec(`self_attn.${x}_proj.bias`))
      bias = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
      let o = 0
      for (const p of parts) { bias.set(p, o); o += p.length }
    }
    this.blocks.push({
      inputNorm: upload(this.device, vec('input_layernorm.weight')),
      qkv: GpuLinear.upload(this.gpu, name('qkv'), ['q', 'k', 'v'].map(x => get(`self_attn.${x}_proj.weight`)), bias),
      out: GpuLinear.upload(this.gpu, name('o_proj'), [get('self_attn.o_proj.weight')]),
      postNorm: upload(this.device, vec('post_attention_layernorm.weight')),
      gateUp: GpuLinear.upload(this.gpu, name('gate/up'), [get('mlp.gate_proj.weight'), get('mlp.up_proj.weight')]),
      down: GpuLinear.upload(this.gpu, name('down_proj'), [get('mlp.down_proj.weight')])
    })
    this.scratch = undefined
  }

  /** A session's cache for engine blocks `[first, first + blocks)`. */
  newStore (first: number, blocks: number, maxLength: number): GpuKVStore {
    return new GpuKVStore(this.pool, first, blocks, maxLength)
  }

  /**
   * Runs the sessions' rows through blocks `[from, from + count)` of this engine; returns the
   * output rows of all sessions, stacked in order. Each store holds `length` positions before.
   * With `tail` (one session), the LM head runs on the last output row in the same submission
   * and the logits come back instead.
   */
  async forward (steps: GpuStep[], from: number, count: number, tail?: GpuHeadTail): Promise<Float32Array> {
    if (tail != null && steps.length !== 1) throw new Error('a step with the LM head runs one session')
    if (steps.length > MAX_SESSIONS_PER_STEP) {
      const outs: Float32Array[] = []
      for (let i = 0; i < steps.length; i += MAX_SESSIONS_PER_STEP) outs.push(await this.forward(steps.slice(i, i + MAX_SESSIONS_PER_STEP), from, count))
      const all = new Float32Array(outs.reduce((n, o) => n + o.length, 0))
      let o = 0
      for (const x of outs) { all.set(x, o); o += x.length }
      return all
    }
    return await this.serial(async () => await this.run(steps, from, count, tail))
  }

  private async run (steps: GpuStep[], from: number, count: number, tail?: GpuHeadTail): Promise<Float32Array> {
    const t0 = performance.now()
    const { device, cfg } = this
    const H = cfg.hiddenSize
    const d = cfg.headDim
    const rows = steps.reduce((n, s) => n + s.tokens, 0)
    if (rows > 65535) throw new Error(`a GPU step takes at most 65535 rows (got ${rows})`)
    for (const st of steps) {
      if (st.store.first > from || st.store.first + st.store.blocks < from + count) throw new Error('the session\'s cache does not cover the step\'s blocks')
      st.store.reserve(st.length + st.tokens)
    }
    const s = this.ensureScratch(rows)

    const input = new Float32Array(rows * H)
    const rot = new Float32Array(rows * 2 * d)
    let row = 0
    for (const st of steps) {
      input.set(st.hidden, row * H)
      const { cos, sin } = rotaryTables(this.invFreq, Array.from({ length: st.tokens }, (_, t) => st.length + t))
      for (let t = 0; t < st.tokens; t++, row++) {
        rot.set(cos.subarray(t * d, (t + 1) * d), row * 2 * d)
        rot.set(sin.subarray(t * d, (t + 1) * d), row * 2 * d + d)
      }
    }
    const paging = stepPaging(steps.map(st => ({ tokens: st.tokens, length: st.length, pages: (b: number) => st.store.pagesOf(from + b) })), rows, count)
    this.ensurePaging(s, paging.byteLength)
    device.queue.writeBuffer(s.x, 0, input)
    device.queue.writeBuffer(s.rot, 0, rot)
    device.queue.writeBuffer(s.paging, 0, paging)
    device.queue.writeBuffer(this.step, 0, stepSlots(rows, count))

    const caches = Array.from({ length: count }, (_, i) => this.cacheBinding(from + i, s))
    const key = `${rows}/${from}/${count}/${caches.map(c => c.key).join(',')}/${tail?.key ?? ''}`
    const ahead = this.ahead?.key === key ? this.ahead.commands : undefined
    this.ahead = undefined
    const { commands, passes } = ahead != null ? { commands: ahead, passes: undefined } : this.record(s, caches, from, rows, tail)
    const out = await submitCommands(this.gpu, commands, tail?.readback ?? s.readback, tail?.bytes ?? rows * H * 4, 'a step', t0, () => {
      // the next step is likely this one again (decode): its commands are recorded while the GPU
      // runs this one, and used if nothing they bind has changed by then
      if (this.timer != null) return
      // a failure here shows again when the next step records its own commands
      try { this.ahead = { key, commands: this.record(s, caches, from, rows, tail).commands } } catch {}
    })
    await passes?.collect()
    return out
  }

  /**
   * A step's commands: every block, then the copy of the output rows into the readback buffer,
   * or the LM head on the last row (`tail`).
   */
  private record (s: Scratch, caches: CacheBinding[], from: number, rows: number, tail?: GpuHeadTail): { commands: GPUCommandBuffer, passes: StepPasses } {
    const encoder = this.device.createCommandEncoder()
    const passes = new StepPasses(encoder, this.timer)
    caches.forEach((cache, i) => this.encodeBlock(passes, s.blocks[from + i], cache, i + 1, rows))
    passes.end()
    if (tail != null) tail.record(encoder, s.x, rows - 1)
    else encoder.copyBufferToBuffer(s.x, 0, s.readback, 0, rows * this.cfg.hiddenSize * 4)
    return { commands: encoder.finish(), passes }
  }

  /**
   * x ← x + attention(norm(x)); x ← x + mlp(norm(x)), for every row of the batch (attention also
   * stores the rows' keys and values). `slot`: the block's step slot, which tells attention which
   * page tables are this block's.
   */
  private encodeBlock (passes: StepPasses, b: BlockBinding, cache: CacheBinding, slot: number, rows: number): void {
    const run = (label: string, pipeline: GPUComputePipeline, group: GPUBindGroup, slot: number, x: number, y = 1): void => {
      const pass = passes.pass(label)
      pass.setPipeline(pipeline)
      pass.setBindGroup(0, group, SLOT_OFFSETS, slot, 1)
      pass.dispatchWorkgroups(x, y)
    }
    // decode rows run the norms inside the projections after them; a prefill's GEMMs do not
    const decode = rows < GEMM_MIN_ROWS ? b.decode : undefined
    if (decode != null) {
      dispatchLinear(passes.pass('norm + q/k/v'), decode.qkv, rows, true)
    } else {
      run('norm', this.k.norm.pipeline, b.norm1, 0, rows)
      dispatchLinear(passes.pass('q/k/v'), b.qkv, rows)
    }
    run('attention', this.k.attention.pipeline, cache.attention, slot, ...attentionGroups(this.shape, rows))
    dispatchLinear(passes.pass('o'), b.out, rows)
    if (decode?.mlp != null) {
      dispatchLinear(passes.pass('norm + gate/up + SwiGLU'), decode.mlp, rows, true)
    } else {
      run('norm', this.k.norm.pipeline, b.norm2, 0, rows)
      dispatchLinear(passes.pass('gate/up'), b.gateUp, rows)
      run('swiglu', this.k.swiglu.pipeline, this.scratch!.swiglu, 0, ...grid(Math.ceil(rows * this.cfg.intermediateSize / 256)))
    }
    dispatchLinear(passes.pass('down'), b.down, rows)
  }

  private ensureScratch (rows: number): Scratch {
    if (this.scratch != null && this.scratch.rows >= rows) return this.scratch
    const old = this.scratch
    let cap = Math.max(16, old?.rows ?? 0)
    while (cap < rows) cap *= 2
    const { device, cfg } = this
    const H = cfg.hiddenSize
    const F = cfg.intermediateSize
    const QD = cfg.numHeads * cfg.headDim
    const QKV = (cfg.numHeads + 2 * cfg.numKvHeads) * cfg.headDim
    const f = (n: number, label: string): GPUBuffer => storage(device, cap * n * 4, label)
    const x = f(H, 'x'); const h = f(H, 'h'); const qkv = f(QKV, 'qkv'); const att = f(QD, 'att')
    const gu = f(2 * F, 'gate/up'); const act = f(F, 'act'); const rot = f(2 * cfg.headDim, 'rot')
    const paging = storage(device, Math.max(old?.paging.size ?? 0, cap * 16 + 4096), 'paging')
    const readback = device.createBuffer({ label: 'readback', size: cap * H * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    const st = this.step
    const blocks = this.blocks.map(b => ({
      norm1: bindGroup(device, this.k.norm, [x, b.inputNorm, h, st]),
      qkv: b.qkv.bind(device, h, qkv, st),
      out: b.out.bind(device, att, x, st, { accumulate: true }),
      norm2: bindGroup(device, this.k.norm, [x, b.postNorm, h, st]),
      gateUp: b.gateUp.bind(device, h, gu, st),
      down: b.down.bind(device, act, x, st, { accumulate: true }),
      decode: !this.fusedNorms ? undefined : {
        qkv: b.qkv.bind(device, x, qkv, st, { norm: { weight: b.inputNorm, eps: cfg.rmsNormEps } }),
        mlp: b.gateUp.bindGated(device, x, act, st, { weight: b.postNorm, eps: cfg.rmsNormEps })
      }
    }))
    if (old != null) for (const buf of [old.x, old.h, old.qkv, old.att, old.gu, old.act, old.rot, old.paging, old.readback]) buf.destroy()
    this.scratch = { rows: cap, generation: ++this.generation, x, h, qkv, att, gu, act, rot, paging, readback, blocks, swiglu: bindGroup(device, this.k.swiglu, [gu, act, st]) }
    return this.scratch
  }

  /** Room for a step's paging words: a larger buffer when needed (the cache bind groups follow it). */
  private ensurePaging (s: Scratch, bytes: number): void {
    if (s.paging.size >= bytes) return
    s.paging.destroy()
    s.paging = storage(this.device, Math.max(bytes, 2 * s.paging.size), 'paging')
    s.generation = ++this.generation
  }

  /** Engine block `block`'s attention bind group, rebuilt when a buffer it binds changes. */
  private cacheBinding (block: number, s: Scratch): CacheBinding {
    const pages = this.pool.buffer(block)
    if (pages.buffer == null) throw new Error(`block ${block} holds no session's pages`)
    const key = `${s.generation}/${pages.generation}`
    const bound = this.caches[block]
    if (bound?.key === key) return bound
    const cache = {
      key,
      attention: bindGroup(this.device, this.k.attention, [s.qkv, s.rot, pages.buffer, s.att, this.step, s.paging])
    }
    this.caches[block] = cache
    return cache
  }

  dispose (): void {
    for (const b of this.blocks) {
      b.inputNorm.destroy(); b.postNorm.destroy()
      b.qkv.destroy(); b.out.destroy(); b.gateUp.destroy(); b.down.destroy()
    }
    this.blocks.length = 0
    const s = this.scratch
    if (s != null) for (const buf of [s.x, s.h, s.qkv, s.att, s.gu, s.act, s.rot, s.paging, s.readback]) buf.destroy()
    this.scratch = undefined
    this.ahead = undefined
    this.caches.length = 0
    this.pool.dispose()
    this.step.destroy()
    if (this.timer != null) { this.timer.querySet.destroy(); this.timer.resolve.destroy(); this.timer.read.destroy() }
  }
}
