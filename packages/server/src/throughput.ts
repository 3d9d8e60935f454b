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
