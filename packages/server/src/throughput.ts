import { readFile, writeFile, mkdir, rename } from 'node:fs/promises'
import { join, dirname } from 'node:path'
import { cpus } from 'node:os'
import { cacheDir } from '@plexus/runtime'
import type { SpanRunner } from '@plexus/runtime'

/**
 * Tokens per second per block for one session's decode step on this machine and backend:
 * the figure announced to clients (routing) and to other servers (placement).
 */
export async function measureThroughput (runner: SpanRunner, hiddenSize: number, steps = 5): Promise<number> {
  const session = await runner.open(steps + 1)
  try {
    const x = new Float32Array(hiddenSize).map((_, i) => Math.sin(i))
    await session.forward(x, 1)
    const times: number[] = []
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now()
      await session.forward(x, 1)
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    const median = times[Math.floor(times.length / 2)] / 1000
    return (runner.end - runner.start) / Math.max(median, 1e-6)
  } finally {
    await session.close()
  }
}

export interface Throughput {
  /** Decode steps per second of one session through the span, per block. */
  tokensPerSecond: number
  /** When it was measured (ms since the epoch). */
  measuredAt: number
  /** Read from the cache rather than measured by this process. */
  cached: boolean
}

/** A cached figure older than this is measured again (drivers, clocks and code change). */
export const THROUGHPUT_MAX_AGE_MS = 7 * 24 * 3600_000

/**
 * The measured throughput, cached per model, backend, span size and machine (CPU model and
 * count): a restart announces at once instead of measuring again. `remeasure` ignores the cache.
 */
export async function cachedThroughput (runner: SpanRunner, hiddenSize: number, opts: { modelId: string, backend: string, cacheDir?: string, remeasure?: boolean }): Promise<Throughput> {
  const file = opts.cacheDir != null ? join(opts.cacheDir, 'throughput.json') : cacheDir('throughput.json')
  const key = [opts.modelId, opts.backend, runner.end - runner.start, cpus()[0]?.model ?? 'cpu', cpus().length].join('|')
  let table: Record<string, { tokensPerSecond: number, measuredAt: number } | number> = {}
  try { table = JSON.parse(await readFile(file, 'utf8')) } catch {}
  const known = table[key]
  // entries of older versions are bare numbers of unknown age: measured again
  if (opts.remeasure !== true && typeof known === 'object' && known != null && known.tokensPerSecond > 0 &&
      Date.now() - known.measuredAt < THROUGHPUT_MAX_AGE_MS) {
    return { tokensPerSecond: known.tokensPerSecond, measuredAt: known.measuredAt, cached: true }
  }
  const measured = { tokensPerSecond: await measureThroughput(runner, hiddenSize), measuredAt: Date.now() }
  try {
    await mkdir(dirname(file), { recursive: true })
    table[key] = measured
    const tmp = `${file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(table, null, 2) + '\n')
    await rename(tmp, file)
  } catch {}
  return { ...measured, cached: false }
}

/** "measured now", or the cached figure's age: "measured 3 h ago (cached)". */
export function describeThroughput (t: Throughput, now = Date.now()): string {
  if (!t.cached) return 'measured now'
  const s = Math.max(0, (now - t.measuredAt) / 1000)
  const age = s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} days`
  return `measured ${age} ago (cached; --remeasure measures again)`
}
