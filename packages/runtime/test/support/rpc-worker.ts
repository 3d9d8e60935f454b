// A worker for packages/runtime/test/worker-rpc.test.ts: a few methods that answer, throw, transfer or hang.
import { parentPort, workerData } from 'node:worker_threads'
import { PlexusError, SpanError } from '@plexus/runtime'
import { serveCalls, transfer } from '../../src/worker-rpc.ts'

export interface TestApi {
  echo (p: unknown): unknown
  double (p: { x: Float32Array }): Float32Array
  fail (p: { kind: 'plexus' | 'span' | 'named' | 'string' }): never
  hang (p: Record<string, never>): never
  exit (p: { code: number }): never
}

const init = (workerData ?? {}) as { failSetup?: boolean, events?: number[] }

void serveCalls<TestApi, number>(parentPort!, async (report) => {
  for (const e of init.events ?? []) report(e)
  if (init.failSetup === true) throw new PlexusError('bad-setup', 'could not load', { httpStatus: 503 })
  return {
    echo: (p) => p,
    double: ({ x }) => {
      const y = x.map(v => 2 * v)
      return transfer(y, [y.buffer])
    },
    fail: async ({ kind }) => {
      if (kind === 'plexus') throw new PlexusError('out-of-room', 'no room for the session', { httpStatus: 503 })
      if (kind === 'span') throw new SpanError('position 9 is past the cache')
      if (kind === 'named') { const err = new RangeError('too far'); throw err }
      throw 'a bare string'
    },
    hang: async () => await new Promise<never>(() => {}),
    exit: ({ code }) => process.exit(code)
  }
})
