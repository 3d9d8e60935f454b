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

/**
 * The measured throughput, cached per model, backend, span size and machine (CPU model and
 * count): a restart announces at once instead of measuring again.
 */
export async function cachedThroughput (runner: SpanRunner, hiddenSize: number, opts: { modelId: string, backend: string, cacheDir?: string }): Promise<number> {
  const file = opts.cacheDir != null ? join(opts.cacheDir, 'throughput.json') : cacheDir('throughput.json')
  const key = [opts.modelId, opts.backend, runner.end - runner.start, cpus()[0]?.model ?? 'cpu', cpus().length].join('|')
  let table: Record<string, number> = {}
  try { table = JSON.parse(await readFile(file, 'utf8')) } catch {}
  const known = table[key]
  if (typeof known === 'number' && known > 0) return known
  const measured = await measureThroughput(runner, hiddenSize)
  try {
    await mkdir(dirname(file), { recursive: true })
    table[key] = measured
    const tmp = `${file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(table, null, 2) + '\n')
    await rename(tmp, file)
  } catch {}
  return measured
}
