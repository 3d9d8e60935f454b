import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

type Gc = (opts?: { type: 'major', flavor: 'last-resort' }) => void
let fullGc: Gc | undefined

/**
 * A full garbage collection, now. Loading weights reads, widens and quantizes every tensor through
 * transient buffers (2–3× the span's bytes); V8 counts them as external memory and may leave them
 * resident long after the load, so a node's RSS would stay far above what its weights need.
 * Called once after a load, never on the per-token path. Uses `gc` when the process was started
 * with --expose-gc, otherwise exposes it for this call (V8's flag, read by a new context).
 * V8's memory-reducing flavour (what it runs near its heap limit): it also shrinks the young
 * generation, grown to its 8 MiB semi-spaces by the load, and gives free old-space pages back
 * (measured: 15–20 MiB less RSS per thread than a plain full collection).
 */
export function collectGarbage (): void {
  if (fullGc == null) {
    const exposed = (globalThis as { gc?: Gc }).gc
    if (typeof exposed === 'function') fullGc = exposed
    else {
      setFlagsFromString('--expose-gc')
      fullGc = runInNewContext('gc') as Gc
    }
  }
  // twice: the first collection runs the finalizers that still reference some buffers
  for (let i = 0; i < 2; i++) fullGc({ type: 'major', flavor: 'last-resort' })
}
