import { getHeapStatistics, setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

type Gc = (opts?: { type: 'major' | 'minor', flavor?: 'last-resort' }) => void
let gcFn: Gc | undefined

/** V8's `gc`: the process's when started with --expose-gc, otherwise exposed now (V8's flag, read by a new context). */
function gc (): Gc {
  if (gcFn == null) {
    const exposed = (globalThis as { gc?: Gc }).gc
    if (typeof exposed === 'function') gcFn = exposed
    else {
      setFlagsFromString('--expose-gc')
      gcFn = runInNewContext('gc') as Gc
    }
  }
  return gcFn
}

/**
 * A full garbage collection, now. Loading weights reads, widens and quantizes every tensor through
 * transient buffers (2–3× the span's bytes); V8 counts them as external memory and may leave them
 * resident long after the load, so a node's RSS would stay far above what its weights need.
 * Called once after a load, never on the per-token path. V8's memory-reducing flavour (what it
 * runs near its heap limit): it also shrinks the young generation, grown to its 8 MiB
 * semi-spaces by the load, and gives free old-space pages back.
 */
export function collectGarbage (): void {
  // twice: the first collection runs the finalizers that still reference some buffers
  for (let i = 0; i < 2; i++) gc()({ type: 'major', flavor: 'last-resort' })
  externalAfterGc = getHeapStatistics().external_memory
}

/** Buffers outside V8's heap a thread may gain between young-generation collections. */
const STEP_GARBAGE_BYTES = 2 * 2 ** 20
let externalAfterGc: number | undefined

/**
 * A young-generation collection (1–6 ms measured on a loaded machine) once this thread's buffers
 * outside V8's heap grew by more than 2 MiB since the last. A step leaves dead host copies of its
 * activations (tfjs-wasm's slice and dataSync copy whole tensors; the kernels' results): ~15 MiB
 * a block for a 64-token prefill on tinyllama, counted from their sizes. V8 collects them only
 * once such memory grew by 64 MiB, and they stay resident until then. Decoding makes little of
 * it, so it rarely collects there.
 */
export function collectStepGarbage (): void {
  const ext = getHeapStatistics().external_memory
  if (externalAfterGc == null || ext < externalAfterGc) { externalAfterGc = ext; return }
  if (ext - externalAfterGc < STEP_GARBAGE_BYTES) return
  gc()({ type: 'minor' })
  externalAfterGc = getHeapStatistics().external_memory
}
