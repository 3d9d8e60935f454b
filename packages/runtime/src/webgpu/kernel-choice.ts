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

/**
 * Whether decode rows run the RMSNorms (and SwiGLU) inside the projections after them (default),
 * or as their own kernels as a prefill does (PLEXUS_GPU_FUSED_NORMS=0, to measure the difference:
 * every workgroup of a fused projection computes its rows' 1/rms again).
 */
export function fusedNorms (): boolean {
  const v = process.env.PLEXUS_GPU_FUSED_NORMS
  if (v == null || v === '' || v === '1') return true
  if (v === '0') return false
  throw new Error(`PLEXUS_GPU_FUSED_NORMS must be 0 or 1 (got ${JSON.stringify(v)})`)
}
