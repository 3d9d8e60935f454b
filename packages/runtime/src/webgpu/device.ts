/// <reference types="@webgpu/types" />
import { readdirSync } from 'node:fs'
import { PlexusError } from '../errors.ts'
import { PROFILING } from './profile.ts'
// The process's GPU: one WebGPU device through Dawn (the `webgpu` package), shared by every span
// and LM head of this thread. Dawn drives Vulkan on Linux, Metal on macOS and D3D12 on Windows.

export class GpuUnavailableError extends PlexusError {
  constructor (message: string) { super('ERR_GPU_UNAVAILABLE', message, { httpStatus: 503 }); this.name = 'GpuUnavailableError' }
}

export interface GpuAdapterSummary {
  vendor: string
  architecture: string
  device: string
  description: string
}

export interface GpuContext {
  /** Dawn's instance: it must stay referenced while the device is in use (async work stops with it). */
  instance: GPU
  device: GPUDevice
  adapterInfo: GpuAdapterSummary
  /** A software rasteriser (Mesa lavapipe, SwiftShader): correct, but slower than the CPU backends. */
  software: boolean
  /** Whether the device has `subgroups` (kernels may use subgroup reductions). */
  subgroups: boolean
  /** Whether kernels can be timed (`timestamp-query`, asked for only when profiling). */
  timestamps: boolean
  /** The last error the device raised outside an error scope (cleared by `takeGpuError`). */
  error?: string
  limits: { maxStorageBufferBindingSize: number, maxBufferSize: number, maxComputeWorkgroupStorageSize: number, maxStorageBuffersPerShaderStage: number }
}

let opening: Promise<GpuContext> | undefined
let active: GpuContext | undefined

/** The GPU this thread computes on, once `acquireGpu` has succeeded. */
export function activeGpu (): GpuContext | undefined { return active }

/**
 * Opens the GPU once per thread. `allowSoftware`: accept a software adapter (tests, or a user who
 * asked for `--backend webgpu` on a machine without a GPU); `auto` does not, and then opens no
 * device at all (a software device would cost threads and memory for nothing).
 */
export async function acquireGpu (opts: { allowSoftware?: boolean } = {}): Promise<GpuContext> {
  const allowSoftware = opts.allowSoftware === true
  if (active != null) {
    if (active.software && !allowSoftware) throw softwareOnly(active.adapterInfo.description)
    return active
  }
  opening ??= open(allowSoftware).finally(() => { opening = undefined })
  active = await opening
  return active
}

function softwareOnly (description: string): GpuUnavailableError {
  return new GpuUnavailableError(`only a software adapter was found (${description}); use --backend webgpu to run on it anyway`)
}

/**
 * Whether a Linux machine shows any GPU device node. Enumerating adapters loads the Vulkan
 * drivers into the process (measured: +54 MiB RSS for Mesa's), so `auto` looks here first and
 * leaves a CPU-only node as lean as before.
 */
function linuxGpuDevice (): boolean {
  const has = (dir: string, re: RegExp): boolean => { try { return readdirSync(dir).some(n => re.test(n)) } catch { return false } }
  return has('/dev/dri', /^renderD\d+$/) || has('/dev', /^(nvidia\d+|dxg)$/)
}

async function open (allowSoftware: boolean): Promise<GpuContext> {
  if (process.env.PLEXUS_SKIP_WEBGPU === '1') throw new GpuUnavailableError('WebGPU is switched off (PLEXUS_SKIP_WEBGPU=1)')
  if (!allowSoftware && process.platform === 'linux' && !linuxGpuDevice()) throw new GpuUnavailableError('no GPU device on this machine (no /dev/dri/renderD*, /dev/nvidia*)')
  let mod: { create: (options: string[]) => GPU, globals: object }
  try {
    mod = await import('webgpu') as any
  } catch (err: any) {
    if (err?.code === 'ERR_MODULE_NOT_FOUND') throw new GpuUnavailableError('the webgpu package is not installed (npm install webgpu)')
    // dawn.node needs glibc ≥ 2.34 and the platform's prebuilt binary
    throw new GpuUnavailableError(`the webgpu package failed to load: ${firstLine(err?.message)}`)
  }
  // GPUBufferUsage, GPUMapMode, … as globals, as in a browser
  for (const [k, v] of Object.entries(mod.globals)) if (!(k in globalThis)) (globalThis as any)[k] = v
  let adapter: GPUAdapter | null
  let instance: GPU
  try {
    instance = mod.create(dawnFlags())
    adapter = await instance.requestAdapter({ powerPreference: 'high-performance' })
  } catch (err: any) {
    // whole: with an unknown adapter= flag, Dawn lists the adapters it has on the lines after
    throw new GpuUnavailableError(`WebGPU could not start: ${String(err?.message ?? err).trim().split(/\s*\n\s*/).join(' ')}`)
  }
  if (adapter == null) {
    throw new GpuUnavailableError(process.platform === 'linux'
      ? 'no GPU adapter: install the Vulkan loader (libvulkan1) and your GPU\'s Vulkan driver (NVIDIA\'s driver ships one; AMD/Intel: mesa-vulkan-drivers)'
      : 'no GPU adapter found')
  }
  const info = adapter.info
  const software = (info as any).isFallbackAdapter === true || info.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(info.description + info.device)
  if (software && !allowSoftware) throw softwareOnly(info.description)
  const want = (name: keyof GPUSupportedLimits): number => adapter!.limits[name] as number
  const subgroups = adapter.features.has('subgroups')
  const timestamps = PROFILING && adapter.features.has('timestamp-query')
  const device = await adapter.requestDevice({
    requiredFeatures: [...(subgroups ? ['subgroups' as GPUFeatureName] : []), ...(timestamps ? ['timestamp-query' as GPUFeatureName] : [])],
    requiredLimits: {
      maxStorageBufferBindingSize: want('maxStorageBufferBindingSize'),
      maxBufferSize: want('maxBufferSize'),
      maxComputeWorkgroupStorageSize: want('maxComputeWorkgroupStorageSize'),
      maxStorageBuffersPerShaderStage: want('maxStorageBuffersPerShaderStage'),
      maxComputeInvocationsPerWorkgroup: want('maxComputeInvocationsPerWorkgroup'),
      maxComputeWorkgroupSizeX: want('maxComputeWorkgroupSizeX')
    }
  })
  device.lost.then((lost) => {
    if (lost.reason !== 'destroyed') process.emitWarning(`GPU device lost: ${lost.message}`)
  }).catch(() => {})
  const l = device.limits
  const ctx: GpuContext = {
    instance,
    device,
    adapterInfo: { vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description },
    software,
    subgroups,
    timestamps,
    limits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage
    }
  }
  // a failed allocation or dispatch must fail the step, never hand back garbage
  device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => { ctx.error ??= firstLine(ev.error.message) }
  return ctx
}

/** Throws the error the GPU raised since the last call, naming what was being done. */
export function takeGpuError (gpu: GpuContext, what: string): void {
  const e = gpu.error
  if (e == null) return
  gpu.error = undefined
  throw new GpuUnavailableError(`${what} failed on the GPU: ${e}`)
}

/**
 * Dawn's own options from PLEXUS_GPU_DAWN_FLAGS, `key=value` separated by `;` (adapter names have
 * spaces): `adapter=NAME` picks one GPU of several, `enable-dawn-features=disable_robustness`
 * measures what Dawn's bounds checks cost. Dawn ignores toggle names it does not know.
 */
function dawnFlags (): string[] {
  const flags = (process.env.PLEXUS_GPU_DAWN_FLAGS ?? '').split(';').map(f => f.trim()).filter(f => f !== '')
  const bad = flags.find(f => !/^[a-z-]+=\S/.test(f))
  if (bad != null) throw new GpuUnavailableError(`PLEXUS_GPU_DAWN_FLAGS takes key=value options of Dawn separated by ";" (got ${JSON.stringify(bad)})`)
  return flags
}

function firstLine (s: unknown): string { return String(s ?? 'unknown error').split('\n')[0] }

/** Runs `fn` and turns a WebGPU validation error raised meanwhile into an exception. */
export async function checked<T> (device: GPUDevice, what: string, fn: () => T): Promise<T> {
  device.pushErrorScope('validation')
  device.pushErrorScope('out-of-memory')
  let out: T | undefined
  let thrown: { err: unknown } | undefined
  try { out = fn() } catch (err) { thrown = { err } }
  // the scopes are popped whether or not fn threw
  const oom = await device.popErrorScope()
  const bad = await device.popErrorScope()
  if (thrown != null) throw thrown.err
  if (oom != null) throw new GpuUnavailableError(`${what}: out of GPU memory (${oom.message})`)
  if (bad != null) throw new Error(`${what}: ${bad.message}`)
  return out as T
}
