/// <reference types="@webgpu/types" />
// Runs single WGSL kernels on the test machine's WebGPU adapter (lavapipe in CI), for checks
// against float64 references.
import { kernel, bindGroup, upload, storage, createStepBuffer } from '../../src/webgpu/linear.ts'
import type { Binding } from '../../src/webgpu/linear.ts'
import { STEP_SLOT } from '../../src/webgpu/kernels.ts'
import { acquireGpu } from '../../src/webgpu/device.ts'
import type { GpuContext } from '../../src/webgpu/device.ts'

/**
 * The GPU for tests: software adapters accepted. Without one the suite fails, saying what to
 * install, unless PLEXUS_SKIP_WEBGPU=1 opts out (then the caller skips, loudly).
 */
export async function testGpu (): Promise<GpuContext> {
  try {
    return await acquireGpu({ allowSoftware: true })
  } catch (err: any) {
    throw new Error(`no WebGPU adapter for the GPU tests (${err.message}). Install a Vulkan driver — on Debian 12: mesa-vulkan-drivers and libvulkan1 from bookworm-backports (see .ci/run) — or set PLEXUS_SKIP_WEBGPU=1 to skip them`)
  }
}

export const skipWebgpu = process.env.PLEXUS_SKIP_WEBGPU === '1'

export type Arg = { data: Float32Array | Uint32Array | Uint8Array, binding: Binding } | { size: number, binding: Binding }

/** Runs `code` once: buffers in binding order (the step uniform from `slot`), returns the read-write buffers' contents. */
export async function runKernel (gpu: GpuContext, code: string, args: Array<Arg | 'step'>, slots: number[][], groups: [number, number?], slot = 0): Promise<Float32Array[]> {
  const { device } = gpu
  const bindings: Binding[] = args.map(a => a === 'step' ? 'step' : a.binding)
  const k = kernel(device, code, bindings)
  const step = createStepBuffer(device, slots.length)
  const words = new Uint32Array(slots.length * STEP_SLOT / 4)
  slots.forEach((s, i) => words.set(s, i * STEP_SLOT / 4))
  device.queue.writeBuffer(step, 0, words)
  const buffers = args.map(a => a === 'step' ? step : 'data' in a ? upload(device, a.data) : storage(device, a.size * 4))
  const encoder = device.createCommandEncoder()
  const pass = encoder.beginComputePass()
  pass.setPipeline(k.pipeline)
  pass.setBindGroup(0, bindGroup(device, k, buffers), [slot * STEP_SLOT])
  pass.dispatchWorkgroups(groups[0], groups[1] ?? 1)
  pass.end()
  const outs: Array<{ src: GPUBuffer, dst: GPUBuffer, size: number }> = []
  args.forEach((a, i) => {
    if (a === 'step' || a.binding !== 'rw') return
    const size = buffers[i].size
    const dst = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    encoder.copyBufferToBuffer(buffers[i], 0, dst, 0, size)
    outs.push({ src: buffers[i], dst, size })
  })
  device.queue.submit([encoder.finish()])
  const result: Float32Array[] = []
  for (const o of outs) {
    await o.dst.mapAsync(GPUMapMode.READ)
    result.push(new Float32Array(o.dst.getMappedRange().slice(0)))
    o.dst.destroy()
  }
  for (const b of buffers) b.destroy()
  return result
}

/** A seeded uniform in [-1, 1). */
export function randoms (n: number, seed: number): Float32Array {
  let s = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * 2 - 1
  }
  return out
}

/** Largest |a − b| relative to the largest |b| (1 when b is all zero). */
export function relErr (a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length < b.length) throw new Error(`length ${a.length} < ${b.length}`)
  let m = 0
  let scale = 0
  for (let i = 0; i < b.length; i++) { m = Math.max(m, Math.abs(a[i] - b[i])); scale = Math.max(scale, Math.abs(b[i])) }
  return m / (scale || 1)
}
