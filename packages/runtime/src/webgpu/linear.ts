/// <reference types="@webgpu/types" />
import type { GpuContext } from './device.ts'
import { takeGpuError } from './device.ts'
import { gemmKernel, GEMM_MIN_ROWS, STEP_SLOT } from './kernels.ts'
import { matvecPlan, matvecGroups } from './matvec.ts'
import { gpuKernels } from './kernel-choice.ts'
import type { GpuKernels } from './kernel-choice.ts'
import type { LinearShape } from './kernels.ts'
import { gpuFormat, gpuBytes, gpuChunk, rowBytes } from './formats.ts'
import type { WeightFormat } from './formats.ts'
import type { WeightDType } from '../checkpoint.ts'

/** A kernel's bindings in order: storage read, storage read-write, or the per-step uniform slot. */
export type Binding = 'read' | 'rw' | 'step'

export interface Kernel { pipeline: GPUComputePipeline, layout: GPUBindGroupLayout, bindings: Binding[] }

const kernels = new WeakMap<GPUDevice, Map<string, Kernel>>()

/** One compiled pipeline per WGSL source and device (every block of a span shares them). */
export function kernel (device: GPUDevice, code: string, bindings: Binding[]): Kernel {
  let byCode = kernels.get(device)
  if (byCode == null) { byCode = new Map(); kernels.set(device, byCode) }
  let k = byCode.get(code)
  if (k == null) {
    const layout = device.createBindGroupLayout({
      entries: bindings.map((b, i) => ({
        binding: i,
        visibility: GPUShaderStage.COMPUTE,
        buffer: b === 'step' ? { type: 'uniform', hasDynamicOffset: true } : { type: b === 'rw' ? 'storage' : 'read-only-storage' }
      }))
    })
    const pipeline = device.createComputePipeline({
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module: device.createShaderModule({ code }), entryPoint: 'main' }
    })
    k = { pipeline, layout, bindings }
    byCode.set(code, k)
  }
  return k
}

export function bindGroup (device: GPUDevice, k: Kernel, buffers: GPUBuffer[]): GPUBindGroup {
  return device.createBindGroup({
    layout: k.layout,
    // the step uniform is bound one 32-byte slot at a time, chosen by dynamic offset
    entries: buffers.map((buffer, i) => ({ binding: i, resource: k.bindings[i] === 'step' ? { buffer, size: 32 } : { buffer } }))
  })
}

/** Sessions one submission takes (their page tables go in one buffer); larger batches are split. */
export const MAX_SESSIONS_PER_STEP = 256

/** Blocks one step runs (a uniform slot each, after the batch's). */
export const MAX_STEP_BLOCKS = 1024

/** Dynamic offsets of every slot: setBindGroup reads one from here (no array per call on the per-step path). */
export const SLOT_OFFSETS = Uint32Array.from({ length: MAX_STEP_BLOCKS + 1 }, (_, i) => i * STEP_SLOT)

/** The per-step uniform slots: slot 0 for the whole batch, one more per block of the step. */
export function createStepBuffer (device: GPUDevice, slots: number): GPUBuffer {
  return device.createBuffer({ label: 'step', size: slots * STEP_SLOT, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST })
}

export function storage (device: GPUDevice, bytes: number, label?: string, extra = 0): GPUBuffer {
  // bindings need a non-zero size, and vec4 views a multiple of 16 bytes
  return device.createBuffer({ label, size: Math.max(16, Math.ceil(bytes / 16) * 16), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | extra })
}

export function upload (device: GPUDevice, data: ArrayBufferView, label?: string): GPUBuffer {
  const b = storage(device, data.byteLength, label)
  device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength)
  return b
}

/** A piece of a weight matrix, as stored: `[rows, in]`, row-major. */
export interface WeightPart { dtype: WeightDType, shape: number[], bytes: Uint8Array }

interface Chunk { format: WeightFormat, weight: GPUBuffer, bias?: GPUBuffer, n0: number, n: number }

/**
 * A linear layer y = x·Wᵀ (+ b) on the GPU, W `[out, in]` kept in its stored precision. Parts
 * (q, k, v or gate, up) are stacked by rows; consecutive parts of one format share a buffer and a
 * dispatch. A buffer larger than the device's largest binding is split by rows into chunks.
 */
export class GpuLinear {
  readonly k: number
  readonly n: number
  /** Bytes on the GPU. */
  readonly bytes: number
  private readonly chunks: Chunk[]
  /** The kernel set, and whether the device's kernels may use subgroup operations. */
  private readonly kernels: GpuKernels
  private readonly subgroups: boolean

  private constructor (k: number, n: number, chunks: Chunk[], bytes: number, gpu: GpuContext) {
    this.k = k
    this.n = n
    this.chunks = chunks
    this.bytes = bytes
    this.kernels = gpuKernels(gpu.software)
    this.subgroups = gpu.subgroups
  }

  static upload (gpu: GpuContext, name: string, parts: WeightPart[], bias?: Float32Array): GpuLinear {
    const k = parts[0].shape[1]
    if (k % 4 !== 0) throw new Error(`${name}: input width ${k} is not a multiple of 4, which the GPU kernels need`)
    if (parts.some(p => p.shape[1] !== k)) throw new Error(`${name}: parts differ in input width`)
    // runs of consecutive parts with one GPU format
    const runs: Array<{ format: WeightFormat, parts: WeightPart[], n0: number }> = []
    let row = 0
    for (const p of parts) {
      const format = gpuFormat(p.dtype)
      const last = runs[runs.length - 1]
      if (last?.format === format) last.parts.push(p)
      else runs.push({ format, parts: [p], n0: row })
      row += p.shape[0]
    }
    const chunks: Chunk[] = []
    let bytes = 0
    // buffers are whole 16-byte words (storage(); q8_0 pads its scales): a chunk's rows fit the
    // binding limit rounded down to 16 bytes
    const limit = Math.floor(gpu.limits.maxStorageBufferBindingSize / 16) * 16
    for (const run of runs) {
      const perRow = rowBytes(run.format, k)
      const data = concat(run.parts.map(p => gpuBytes(run.format, p)))
      const n = data.byteLength / perRow
      const rowsPerChunk = Math.max(1, Math.floor(limit / perRow))
      for (let r0 = 0; r0 < n; r0 += rowsPerChunk) {
        const rows = Math.min(rowsPerChunk, n - r0)
        const n0 = run.n0 + r0
        // each chunk's own layout: q8_0's scales follow the chunk's int8
        const weight = gpuChunk(run.format, k, data.subarray(r0 * perRow, (r0 + rows) * perRow))
        chunks.push({
          format: run.format,
          weight: upload(gpu.device, weight, `${name}[${n0}]`),
          bias: bias != null ? upload(gpu.device, bias.subarray(n0, n0 + rows), `${name}.bias[${n0}]`) : undefined,
          n0,
          n: rows
        })
        bytes += weight.byteLength
      }
    }
    return new GpuLinear(k, row, chunks, bytes, gpu)
  }

  /**
   * Bind groups for input `x` `[rows, k]` and output `y` (row stride `yStride`, this layer's
   * outputs at column `yOffset`). `norm`: x is the residual stream, RMS-normalized with these
   * weights in the decode kernel (then there is no GEMM).
   */
  bind (device: GPUDevice, x: GPUBuffer, y: GPUBuffer, step: GPUBuffer, opts: { yStride?: number, yOffset?: number, accumulate?: boolean, norm?: LinearNorm } = {}): LinearBinding {
    return this.chunks.map(c => {
      const shape: LinearShape = {
        format: c.format, k: this.k, n: c.n, n0: (opts.yOffset ?? 0) + c.n0, yStride: opts.yStride ?? this.n, bias: c.bias != null, accumulate: opts.accumulate === true, norm: opts.norm?.eps
      }
      const extra = [...(c.bias != null ? [c.bias] : []), ...(opts.norm != null ? [opts.norm.weight] : [])]
      const bindings: Binding[] = ['read', 'read', 'rw', 'step', ...extra.map(() => 'read' as const)]
      const buffers = [x, c.weight, y, step, ...extra]
      // the GEMM is compiled on the first prefill that needs it (compiling is not free)
      let gemm: Bound | undefined
      return {
        n: c.n,
        matvec: this.matvec(device, shape, bindings, buffers, c.n),
        gemm: () => {
          if (opts.norm != null) throw new Error('a normalizing projection runs decode steps only')
          if (gemm == null) { const g = kernel(device, gemmKernel(shape), bindings); gemm = { pipeline: g.pipeline, group: bindGroup(device, g, buffers) } }
          return gemm
        }
      }
    })
  }

  /**
   * For a layer of gate rows then up rows (the SwiGLU MLP's first half): the decode kernel that
   * writes act = silu(gate)·up `[rows, n/2]` in one dispatch. Undefined where the rows are not one
   * buffer (then the MLP runs the projection and the SwiGLU kernel apart).
   */
  bindGated (device: GPUDevice, x: GPUBuffer, act: GPUBuffer, step: GPUBuffer, norm?: LinearNorm): LinearBinding | undefined {
    const c = this.chunks[0]
    if (this.chunks.length !== 1 || c.bias != null || c.n % 2 !== 0) return undefined
    const shape: LinearShape = { format: c.format, k: this.k, n: c.n, n0: 0, yStride: c.n / 2, bias: false, accumulate: false, gated: true, norm: norm?.eps }
    const buffers = [x, c.weight, act, step, ...(norm != null ? [norm.weight] : [])]
    return [{
      n: c.n / 2,
      matvec: this.matvec(device, shape, buffers.map((_, i) => i === 2 ? 'rw' : i === 3 ? 'step' : 'read'), buffers, c.n / 2),
      gemm: () => { throw new Error('the gated kernel runs decode steps only') }
    }]
  }

  private matvec (device: GPUDevice, shape: LinearShape, bindings: Binding[], buffers: GPUBuffer[], outputs: number): LinearBinding[number]['matvec'] {
    const plan = matvecPlan(shape, this.kernels, this.subgroups)
    const mv = kernel(device, plan.code, bindings)
    return { pipeline: mv.pipeline, group: bindGroup(device, mv, buffers), groups: matvecGroups(outputs, plan.rowsPerGroup) }
  }

  destroy (): void {
    for (const c of this.chunks) { c.weight.destroy(); c.bias?.destroy() }
  }
}

/** An RMSNorm a decode kernel applies to its input rows: weights `[k]` (f32) and epsilon. */
export interface LinearNorm { weight: GPUBuffer, eps: number }

export type LinearBinding = Array<{ n: number, matvec: Bound & { groups: [number, number] }, gemm: () => Bound }>
export interface Bound { pipeline: GPUComputePipeline, group: GPUBindGroup }

/** Records y = x·Wᵀ for `rows` rows: matrix-vector for a few rows, tiled GEMM for many. */
export function dispatchLinear (pass: GPUComputePassEncoder, l: LinearBinding, rows: number, matvecOnly = false): void {
  for (const c of l) {
    if (rows < GEMM_MIN_ROWS || matvecOnly) {
      pass.setPipeline(c.matvec.pipeline)
      pass.setBindGroup(0, c.matvec.group, SLOT_OFFSETS, 0, 1)
      pass.dispatchWorkgroups(...c.matvec.groups)
    } else {
      const gemm = c.gemm()
      pass.setPipeline(gemm.pipeline)
      pass.setBindGroup(0, gemm.group, SLOT_OFFSETS, 0, 1)
      pass.dispatchWorkgroups(Math.ceil(c.n / 64), Math.ceil(rows / 64))
    }
  }
}

/** The step's slot 0 and one slot per block (its index among the step's blocks): `Step` in kernels.ts. */
export function stepSlots (rows: number, blocks = 0): Uint32Array {
  if (blocks > MAX_STEP_BLOCKS) throw new Error(`a GPU step runs at most ${MAX_STEP_BLOCKS} blocks (got ${blocks})`)
  const words = STEP_SLOT / 4
  const out = new Uint32Array((blocks + 1) * words)
  for (let i = 0; i <= blocks; i++) out.set([rows, Math.max(0, i - 1)], i * words)
  return out
}

function concat (parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.byteLength }
  return out
}

/** Where a kind of submission's time goes: recording it on the CPU, then waiting for the GPU and the readback. */
export interface GpuSubmissionTimes { submissions: number, recordMs: number, waitMs: number }
const times = new Map<string, GpuSubmissionTimes>()

/** Totals per kind of submission ('a step', 'the LM head') since the last reset: for benchmarks. */
export function gpuSubmissionTimes (reset = false): Record<string, GpuSubmissionTimes> {
  const out = Object.fromEntries([...times].map(([k, v]) => [k, { ...v }]))
  if (reset) times.clear()
  return out
}

/**
 * Copies `bytes` of `src` into `readback` as the last command of `encoder`, submits, and returns
 * them once the GPU is done: the one readback of a step (see submitCommands).
 */
export async function submitAndRead (gpu: GpuContext, encoder: GPUCommandEncoder, src: GPUBuffer, readback: GPUBuffer, bytes: number, what: string, recordStart: number): Promise<Float32Array> {
  encoder.copyBufferToBuffer(src, 0, readback, 0, bytes)
  return await submitCommands(gpu, encoder.finish(), readback, bytes, what, recordStart)
}

/**
 * Submits `commands`, whose last command copied `bytes` into `readback`, and returns those bytes
 * once the GPU is done; a GPU error raised meanwhile fails it. `recordStart`: when the caller began
 * recording the work (performance.now()); `whileWaiting` runs once the work is submitted.
 */
export async function submitCommands (gpu: GpuContext, commands: GPUCommandBuffer, readback: GPUBuffer, bytes: number, what: string, recordStart: number, whileWaiting?: () => void): Promise<Float32Array> {
  gpu.device.queue.submit([commands])
  const submitted = performance.now()
  const mapped = readback.mapAsync(GPUMapMode.READ, 0, bytes)
  whileWaiting?.()
  await mapped
  let t = times.get(what)
  if (t == null) { t = { submissions: 0, recordMs: 0, waitMs: 0 }; times.set(what, t) }
  t.submissions++
  t.recordMs += submitted - recordStart
  t.waitMs += performance.now() - submitted
  try {
    takeGpuError(gpu, what)
    return new Float32Array(readback.getMappedRange(0, bytes).slice(0))
  } finally {
    readback.unmap()
  }
}

/** Runs calls one at a time, in order (they share scratch and readback buffers); a failure fails only its call. */
export function serially (): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve()
  return async (fn) => {
    const run = tail.then(fn)
    tail = run.catch(() => {})
    return await run
  }
}
