// What library components (the client's routes, reroutes, fetches) log through componentLog,
// collected for a test to read instead of going to stderr.
import { setLogWriter } from '@plexus/p2p'

/** Appends every log line (without its newline) to `into` until the returned function is called. */
export function captureLog (into: string[]): () => void {
  setLogWriter(line => { into.push(line.replace(/\n$/, '')) })
  return () => { setLogWriter(undefined) }
}
