import * as tf from '@tensorflow/tfjs-core'

/** `tensorflow` = tfjs-node-gpu or tfjs-node (native TensorFlow), loaded only when installed. */
export type BackendName = 'tensorflow' | 'wasm' | 'cpu'
export const BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu']

export class BackendError extends Error {
  constructor (message: string) { super(message); this.name = 'BackendError' }
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

async function load (name: BackendName): Promise<boolean> {
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

/**
 * Selects the compute backend for this process (or worker). Without a name, the fastest that
 * loads: native TensorFlow, then wasm (SIMD), then plain JavaScript.
 */
export async function initBackend (name?: BackendName | 'auto'): Promise<BackendName> {
  if (name != null && name !== 'auto' && !BACKENDS.includes(name)) {
    throw new BackendError(`unknown backend "${name}" (choose one of: ${BACKENDS.join(', ')}, auto)`)
  }
  // PROD silences tfjs's console advice (e.g. "install tfjs-node") and its debug checks.
  tf.env().set('PROD', true)
  const wanted = name == null || name === 'auto' ? BACKENDS : [name]
  if (active != null && wanted.includes(active)) return active
  for (const b of wanted) {
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
