/// <reference types="@webgpu/types" />
// Where a step's GPU time goes, kernel by kernel: with PLEXUS_GPU_PROFILE=1 (and a device with
// `timestamp-query`) every kernel of a step gets a compute pass of its own with timestamps at its
// start and end. Separate passes cost a little, so profiled steps are slower; the shares are the
// point. Without it a step records into one pass and nothing here runs.

/** Asked for by the environment; device.ts requests `timestamp-query` for it. */
export const PROFILING = process.env.PLEXUS_GPU_PROFILE === '1'

/** Passes one step can time (two timestamps each); later kernels of a longer step go untimed. */
const MAX_PASSES = 2048

const totals = new Map<string, { passes: number, ns: number }>()

/** GPU milliseconds per kernel label since the last reset (empty unless profiling). */
export function gpuKernelTimes (reset = false): Record<string, { passes: number, ms: number }> {
  const out = Object.fromEntries([...totals].map(([k, v]) => [k, { passes: v.passes, ms: v.ns / 1e6 }]))
  if (reset) totals.clear()
  return out
}

/** One engine's timestamp buffers, made on its first profiled step. */
export interface StepTimer { querySet: GPUQuerySet, resolve: GPUBuffer, read: GPUBuffer }

export function stepTimer (device: GPUDevice, timestamps: boolean): StepTimer | undefined {
  if (!PROFILING || !timestamps) return undefined
  const bytes = MAX_PASSES * 2 * 8
  return {
    querySet: device.createQuerySet({ type: 'timestamp', count: MAX_PASSES * 2 }),
    resolve: device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
    read: device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
  }
}

/**
 * The compute passes of one step: `pass(label)` gives the pass to record that kernel into. One
 * shared pass normally; a timed pass per kernel when profiling.
 */
export class StepPasses {
  private current?: GPUComputePassEncoder
  private readonly labels: string[] = []
  private readonly encoder: GPUCommandEncoder
  private readonly timer?: StepTimer

  constructor (encoder: GPUCommandEncoder, timer?: StepTimer) {
    this.encoder = encoder
    this.timer = timer
  }

  pass (label: string): GPUComputePassEncoder {
    if (this.timer == null || this.labels.length >= MAX_PASSES) {
      this.current ??= this.encoder.beginComputePass()
      return this.current
    }
    this.current?.end()
    const i = this.labels.length
    this.labels.push(label)
    this.current = this.encoder.beginComputePass({ timestampWrites: { querySet: this.timer.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } })
    return this.current
  }

  /** Ends the last pass and, when profiling, copies the timestamps out. */
  end (): void {
    this.current?.end()
    this.current = undefined
    const n = this.labels.length
    if (this.timer == null || n === 0) return
    this.encoder.resolveQuerySet(this.timer.querySet, 0, 2 * n, this.timer.resolve, 0)
    this.encoder.copyBufferToBuffer(this.timer.resolve, 0, this.timer.read, 0, 2 * n * 8)
  }

  /** After the step's submission: adds each kernel's time to the totals. */
  async collect (): Promise<void> {
    const n = this.labels.length
    if (this.timer == null || n === 0) return
    await this.timer.read.mapAsync(GPUMapMode.READ, 0, 2 * n * 8)
    try {
      const ts = new BigUint64Array(this.timer.read.getMappedRange(0, 2 * n * 8))
      this.labels.forEach((label, i) => {
        const t = totals.get(label) ?? { passes: 0, ns: 0 }
        t.passes++
        t.ns += Number(ts[2 * i + 1] - ts[2 * i])
        totals.set(label, t)
      })
    } finally {
      this.timer.read.unmap()
    }
  }
}
