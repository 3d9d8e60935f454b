/// <reference types="@webgpu/types" />
// One decode projection on the GPU by itself, for measuring the matrix-vector kernel's shapes
// (`npm run bench:matvec`): the weights uploaded in several copies, so that timed dispatches
// cycling through them read memory rather than the L2 cache, and the kernel swapped per shape.
import type { GpuContext } from './device.ts'
import { kernel, bindGroup, upload, storage, createStepBuffer, stepSlots, submitAndRead, SLOT_OFFSETS } from './linear.ts'
import type { Binding, Kernel, WeightPart } from './linear.ts'
import { matvecPlan, matvecGroups } from './matvec.ts'
import { gpuFormat, gpuBytes, gpuChunk } from './formats.ts'
import type { LinearShape } from './kernels.ts'

export interface GpuMatvecLayerInit {
  /** `[n, k]` as a checkpoint stores it (F16, Q8_0, …). */
  weight: WeightPart
  /** The rows are gate rows then up rows, and the output silu(gate)·up. */
  gated?: boolean
  /** RMSNorm weights `[k]`: the input rows are normalized in the kernel. */
  norm?: Float32Array
  /** Weight copies the timed dispatches cycle through. */
  copies: number
  /** Most rows a dispatch will take. */
  maxRows: number
}

export class GpuMatvecLayer {
  /** Bytes of one copy of the weights on the GPU. */
  readonly bytes: number
  readonly outputs: number
  private readonly gpu: GpuContext
  private readonly shape: LinearShape
  private readonly buffers: { weights: GPUBuffer[], x: GPUBuffer, y: GPUBuffer, norm?: GPUBuffer, step: GPUBuffer, readback: GPUBuffer }
  private current?: { kernel: Kernel, groups: GPUBindGroup[], grid: [number, number] }

  constructor (gpu: GpuContext, init: GpuMatvecLayerInit) {
    const [n, k] = init.weight.shape
    const format = gpuFormat(init.weight.dtype)
    const data = gpuChunk(format, k, gpuBytes(format, init.weight))
    const { device } = gpu
    this.gpu = gpu
    this.bytes = data.byteLength
    this.outputs = init.gated === true ? n / 2 : n
    this.shape = { format, k, n, n0: 0, yStride: this.outputs, bias: false, accumulate: false, gated: init.gated, norm: init.norm != null ? 1e-5 : undefined }
    this.buffers = {
      weights: Array.from({ length: Math.max(1, init.copies) }, () => upload(device, data)),
      x: storage(device, init.maxRows * k * 4),
      y: storage(device, init.maxRows * this.outputs * 4),
      norm: init.norm != null ? upload(device, init.norm) : undefined,
      step: createStepBuffer(device, 1),
      readback: device.createBuffer({ size: init.maxRows * this.outputs * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    }
  }

  /**
   * The kernel to run from now on: 'legacy' (the first kernels), 'default', or a shape as
   * PLEXUS_GPU_MATVEC_SHAPE takes it (LxS[xU[xM]]).
   */
  use (variant: string): void {
    const saved = process.env.PLEXUS_GPU_MATVEC_SHAPE
    if (variant === 'default' || variant === 'legacy') delete process.env.PLEXUS_GPU_MATVEC_SHAPE
    else process.env.PLEXUS_GPU_MATVEC_SHAPE = variant
    try {
      const plan = matvecPlan(this.shape, variant === 'legacy' ? 'legacy' : 'fast', this.gpu.subgroups)
      const b = this.buffers
      const bindings: Binding[] = ['read', 'read', 'rw', 'step', ...(b.norm != null ? ['read' as const] : [])]
      const k = kernel(this.gpu.device, plan.code, bindings)
      const groups = b.weights.map(w => bindGroup(this.gpu.device, k, [b.x, w, b.y, b.step, ...(b.norm != null ? [b.norm] : [])]))
      this.current = { kernel: k, groups, grid: matvecGroups(this.outputs, plan.rowsPerGroup) }
    } finally {
      if (saved == null) delete process.env.PLEXUS_GPU_MATVEC_SHAPE; else process.env.PLEXUS_GPU_MATVEC_SHAPE = saved
    }
  }

  /** One dispatch on input rows `x` `[rows, k]`: the outputs `[rows, outputs]`. */
  async run (x: Float32Array, rows: number): Promise<Float32Array> {
    const t0 = performance.now()
    this.gpu.device.queue.writeBuffer(this.buffers.x, 0, x.buffer, x.byteOffset, rows * this.shape.k * 4)
    return await submitAndRead(this.gpu, this.record(rows, 1), this.buffers.y, this.buffers.readback, rows * this.outputs * 4, 'a matvec layer', t0)
  }

  /** Milliseconds of `dispatches` dependent dispatches on `rows` rows, one submission, cycling the copies. */
  async time (rows: number, dispatches: number): Promise<number> {
    const { queue } = this.gpu.device
    const t0 = performance.now()
    queue.submit([this.record(rows, dispatches).finish()])
    await queue.onSubmittedWorkDone()
    return performance.now() - t0
  }

  private record (rows: number, dispatches: number): GPUCommandEncoder {
    const c = this.current
    if (c == null) throw new Error('no kernel chosen: call use() first')
    const { device } = this.gpu
    device.queue.writeBuffer(this.buffers.step, 0, stepSlots(rows))
    const enc = device.createCommandEncoder()
    const pass = enc.beginComputePass()
    pass.setPipeline(c.kernel.pipeline)
    for (let i = 0; i < dispatches; i++) {
      pass.setBindGroup(0, c.groups[i % c.groups.length], SLOT_OFFSETS, 0, 1)
      pass.dispatchWorkgroups(...c.grid)
    }
    pass.end()
    return enc
  }

  destroy (): void {
    const b = this.buffers
    for (const buf of [...b.weights, b.x, b.y, b.step, b.readback, ...(b.norm != null ? [b.norm] : [])]) buf.destroy()
  }
}
