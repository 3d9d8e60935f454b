// Prints the WebGPU adapter as Dawn sees it and as Plexus's runtime opens it (one JSON line each).
// Exit status 0 when the runtime's webgpu backend initialised, 1 otherwise. Used by run.sh.
import { create, globals } from 'webgpu'

const line = (o: unknown): void => { process.stdout.write(JSON.stringify(o) + '\n') }

// Dawn directly: what the driver offers, independent of the runtime.
try {
  Object.assign(globalThis, globals)
  const gpu = create([])
  const adapter: any = await gpu.requestAdapter({ powerPreference: 'high-performance' })
  if (adapter == null) line({ dawn: 'no adapter (requestAdapter returned null: no Vulkan loader, driver or device)' })
  else {
    const i = adapter.info ?? {}
    line({
      dawn: { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description, fallback: adapter.isFallbackAdapter ?? i.isFallbackAdapter },
      features: [...adapter.features].sort(),
      limits: { maxBufferSize: adapter.limits.maxBufferSize, maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize }
    })
  }
} catch (err: any) {
  line({ dawn: `failed: ${String(err?.message ?? err)}` })
}

// The runtime's backend (explicit webgpu accepts a software adapter too).
try {
  const rt: Record<string, any> = await import('@plexus/runtime')
  const backend = await rt.initBackend('webgpu')
  const g = rt.activeGpu?.()
  line({ runtime: { backend, adapter: g?.adapterInfo, software: g?.software, subgroups: g?.subgroups, limits: g?.limits } })
  process.exit(backend === 'webgpu' ? 0 : 1)
} catch (err: any) {
  line({ runtime: `failed: ${String(err?.message ?? err)}` })
  process.exit(1)
}
