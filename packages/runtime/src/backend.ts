import * as tf from '@tensorflow/tfjs-core'
import { acquireGpu } from './webgpu/device.ts'
import { PlexusError } from './errors.ts'

/**
 * `webgpu` = Plexus's own WGSL kernels on the GPU (any vendor, through Dawn); `tensorflow` =
 * tfjs-node-gpu or tfjs-node (native TensorFlow), loaded only when installed; `wasm` and `cpu`
 * are TensorFlow.js's WebAssembly (SIMD) and plain JavaScript kernels.
 */
export type BackendName = 'webgpu' | 'tensorflow' | 'wasm' | 'cpu'
export const BACKENDS: readonly BackendName[] = ['webgpu', 'tensorflow', 'wasm', 'cpu']

/** A compute backend that cannot run here (not installed, no device). */
export class BackendError extends PlexusError {
  constructor (message: string) { super('backend', message); this.name = 'BackendError' }
}

let active: BackendName | undefined

async function tryImport (spec: string): Promise<boolean> {
  try {
    await import(spec)
    return true
  } catch (err: any) {
    if (err?.code === 'ERR_MODULE_NOT_FOUND' || err?.code === 'MODULE_NOT_FOUND') return false
    throw new BackendError(`${spec} is installed but failed to load: ${err.message}`)
  }
}

/** Loads a tfjs backend (webgpu is Plexus's own and is opened by initBackend). */
async function load (name: Exclude<BackendName, 'webgpu'>): Promise<boolean> {
  switch (name) {
    case 'tensorflow':
      // The GPU build first: it registers as 'tensorflow' too.
      if (!(await tryImport('@tensorflow/tfjs-node-gpu')) && !(await tryImport('@tensorflow/tfjs-node'))) return false
      return tf.findBackend('tensorflow') != null
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm')
      return true
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu')
      return true
  }
}

export interface InitBackendOptions {
  /** Where `auto` says, in one line, why it passed over the GPU (default: stderr). */
  note?: (line: string) => void
}

/**
 * Selects the compute backend for this process (or worker). Without a name, the fastest that
 * loads: a hardware GPU through WebGPU, native TensorFlow, wasm (SIMD), then plain JavaScript.
 * `webgpu` named explicitly also accepts a software adapter (Mesa lavapipe), which `auto` skips.
 */
export async function initBackend (name?: BackendName | 'auto', opts: InitBackendOptions = {}): Promise<BackendName> {
  if (name != null && name !== 'auto' && !BACKENDS.includes(name)) {
    throw new BackendError(`unknown backend "${name}" (choose one of: ${BACKENDS.join(', ')}, auto)`)
  }
  // PROD silences tfjs's console advice (e.g. "install tfjs-node") and its debug checks.
  tf.env().set('PROD', true)
  const wanted = name == null || name === 'auto' ? BACKENDS : [name]
  if (active != null && wanted.includes(active)) return active
  if (wanted.includes('webgpu')) {
    const explicit = name === 'webgpu'
    try {
      await acquireGpu({ allowSoftware: explicit })
      // whatever still runs on tfjs in this thread gets its fastest portable backend
      await initBackend('wasm')
      active = 'webgpu'
      return 'webgpu'
    } catch (err: any) {
      if (explicit) throw new BackendError(`backend "webgpu": ${err.message}`)
      ;(opts.note ?? ((l: string) => process.stderr.write(l + '\n')))(`webgpu: ${err.message}; using the next backend`)
    }
  }
  for (const b of wanted) {
    if (b === 'webgpu') continue
    if (!(await load(b))) {
      if (name === 'tensorflow') {
        throw new BackendError('backend "tensorflow" needs @tensorflow/tfjs-node-gpu (CUDA) or @tensorflow/tfjs-node installed: npm install @tensorflow/tfjs-node-gpu')
      }
      continue
    }
    if (await tf.setBackend(b)) {
      await tf.ready()
      active = b
      return b
    }
    if (name != null && name !== 'auto') throw new BackendError(`backend "${b}" failed to initialise`)
  }
  throw new BackendError('no TensorFlow.js backend could be initialised')
}

export function activeBackend (): BackendName | undefined { return active }
