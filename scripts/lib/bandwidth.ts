/// <reference types="@webgpu/types" />
// The ceilings bench:gpu measures decode against, in the same run: what a kernel can stream from
// the GPU's memory, what a buffer copy moves, and (CPU backends) what a memcpy moves.

export interface Bandwidth { bytesPerSecond: number, bytes: number, passes: number }

/** Best of three timed submissions of `passes` repetitions each, after a warm-up of two. */
async function bestOf (device: GPUDevice, record: (enc: GPUCommandEncoder, passes: number) => void, passes: number): Promise<number> {
  const run = async (n: number): Promise<number> => {
    const enc = device.createCommandEncoder()
    record(enc, n)
    const t0 = performance.now()
    device.queue.submit([enc.finish()])
    await device.queue.onSubmittedWorkDone()
    return (performance.now() - t0) / 1000
  }
  await run(2)
  let best = Infinity
  for (let t = 0; t < 3; t++) best = Math.min(best, await run(passes))
  return best
}

/** copyBufferToBuffer of one large buffer back and forth: bytes read + written per second. */
export async function gpuCopyBandwidth (device: GPUDevice, software: boolean): Promise<Bandwidth> {
  const bytes = Math.min(software ? 64 * 2 ** 20 : 2 ** 30, Math.floor(device.limits.maxBufferSize / 2 / 256) * 256)
  const passes = software ? 4 : 20
  const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST
  const src = device.createBuffer({ size: bytes, usage })
  const dst = device.createBuffer({ size: bytes, usage })
  try {
    const seconds = await bestOf(device, (enc, n) => {
      for (let i = 0; i < n; i++) enc.copyBufferToBuffer(i % 2 === 0 ? src : dst, 0, i % 2 === 0 ? dst : src, 0, bytes)
    }, passes)
    return { bytesPerSecond: 2 * bytes * passes / seconds, bytes, passes }
  } finally {
    src.destroy()
    dst.destroy()
  }
}

/**
 * What a kernel can stream: every thread reads 16-byte words of one large buffer, grid-strided,
 * and folds them into a value it writes only if it matches a pattern (so no read can be dropped).
 * Decode is this access pattern: weights read once, nothing written back. This is the ceiling.
 */
export async function gpuReadBandwidth (device: GPUDevice, software: boolean): Promise<Bandwidth> {
  const bytes = Math.min(software ? 64 * 2 ** 20 : 2 ** 30, Math.floor(device.limits.maxStorageBufferBindingSize / 16) * 16)
  const passes = software ? 4 : 20
  const threads = 256 * 4096
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(256)
fn main (@builtin(global_invocation_id) g: vec3<u32>) {
  var acc = vec4<u32>(0u);
  for (var i = g.x; i < ${bytes / 16}u; i += ${threads}u) { acc ^= src[i]; }
  if (all(acc == vec4<u32>(0x9e3779b9u))) { sink[g.x % 256u] = 1u; }
}`
  })
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } })
  const src = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE })
  const sink = device.createBuffer({ size: 1024, usage: GPUBufferUsage.STORAGE })
  try {
    const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: sink } }] })
    const seconds = await bestOf(device, (enc, n) => {
      const pass = enc.beginComputePass()
      pass.setPipeline(pipeline)
      pass.setBindGroup(0, group)
      for (let i = 0; i < n; i++) pass.dispatchWorkgroups(threads / 256)
      pass.end()
    }, passes)
    return { bytesPerSecond: bytes * passes / seconds, bytes, passes }
  } finally {
    src.destroy()
    sink.destroy()
  }
}

/** The same measure for CPU backends: one large typed-array copy. */
export function hostCopyBandwidth (): Bandwidth {
  const bytes = 256 * 2 ** 20
  const src = new Uint8Array(bytes).fill(1)
  const dst = new Uint8Array(bytes)
  dst.set(src)
  const copies = 4
  let best = Infinity
  for (let t = 0; t < 3; t++) {
    const t0 = performance.now()
    for (let i = 0; i < copies; i++) dst.set(src)
    best = Math.min(best, (performance.now() - t0) / 1000)
  }
  return { bytesPerSecond: 2 * bytes * copies / best, bytes, passes: copies }
}
