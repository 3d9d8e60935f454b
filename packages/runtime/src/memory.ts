import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

let fullGc: (() => void) | undefined

/**
 * A full garbage collection, now. Loading weights reads, widens and quantizes every tensor through
 * transient buffers (2–3× the span's bytes); V8 counts them as external memory and may leave them
 * resident long after the load, so a node's RSS would stay far above what its weights need.
 * Called once after a load, never on the per-token path. Uses `gc` when the process was started
 * with --expose-gc, otherwise exposes it for this call (V8's flag, read by a new context).
 */
export function collectGarbage (): void {
  if (fullGc == null) {
    const exposed = (globalThis as { gc?: () => void }).gc
    if (typeof exposed === 'function') fullGc = exposed
    else {
      setFlagsFromString('--expose-gc')
      fullGc = runInNewContext('gc') as () => void
    }
  }
  // twice: the first collection runs the finalizers that still reference some buffers
  fullGc()
  fullGc()
}
