// Which of the two kernel sets a device runs. The fast ones (matvec.ts, attention.ts) are what a
// GPU wants; software Vulkan (lavapipe, for CI) runs them correctly but compiles each of their
// pipelines in seconds where the first, simpler kernels take milliseconds, so it keeps those
// unless told otherwise. Read when a span or head is built, so a test can choose per model.

/** `fast`: subgroup sums where the device has them; `fast-shared`: workgroup-memory sums; `legacy`: the first kernels. */
export type GpuKernels = 'fast' | 'fast-shared' | 'legacy'

const CHOICES: GpuKernels[] = ['fast', 'fast-shared', 'legacy']

export function gpuKernels (software: boolean): GpuKernels {
  const v = process.env.PLEXUS_GPU_KERNELS
  if (v == null || v === '') return software ? 'legacy' : 'fast'
  if ((CHOICES as string[]).includes(v)) return v as GpuKernels
  throw new Error(`PLEXUS_GPU_KERNELS must be ${CHOICES.join(', ')} (got ${JSON.stringify(v)})`)
}
