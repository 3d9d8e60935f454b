// Shared by the benchmarks: the model to measure and the statistics they print.
import { access, mkdtemp, rm } from 'node:fs/promises'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { makeModel } from './model-maker.ts'
import type { ShapeName } from './model-maker.ts'

/**
 * `dir` as given, or a float32 model of `shape` (cut to `layers` blocks when given) made once in
 * the temp folder and reused by later runs: one copy per shape, never one per run.
 */
export async function benchModel (dir: string | undefined, shape: string, log: (s: string) => void, layers?: number): Promise<string> {
  if (dir != null) return dir
  const made = join(tmpdir(), `plexus-bench-${shape}${layers != null ? `-${layers}l` : ''}-f32`)
  try { await access(join(made, 'plexus-manifest.json')) } catch {
    log(`making a ${shape}${layers != null ? ` (${layers} layers)` : ''} model in ${made}…`)
    await makeModel({ shape: shape as ShapeName, dtype: 'f32', out: made, seed: 5, layers })
  }
  return made
}

const exitHooks = new Set<() => void>()
let hooked = false

/**
 * Runs `fn` (synchronous) when the process ends however it ends: normally, by an uncaught error, or
 * on SIGINT/SIGTERM (which then exit 130/143). Returns a function that runs it now, once.
 */
export function onExit (fn: () => void): () => void {
  let done = false
  const once = (): void => { if (done) return; done = true; exitHooks.delete(once); try { fn() } catch {} }
  exitHooks.add(once)
  if (!hooked) {
    hooked = true
    process.on('exit', () => { for (const h of [...exitHooks]) h() })
    for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) process.on(sig, () => process.exit(code))
  }
  return once
}

/**
 * A fresh directory in the temp folder for what one run writes (GGUF copies, models), removed
 * by `remove()` or, failing that, when the process exits (errors and Ctrl-C included).
 */
export async function benchTempDir (prefix: string): Promise<{ dir: string, remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  const now = onExit(() => rmSync(dir, { recursive: true, force: true }))
  return { dir, remove: async () => { await rm(dir, { recursive: true, force: true }); now() } }
}

/** Block ranges splitting `numBlocks` into `parts` near-equal spans, as `a:b` strings. */
export function thirds (numBlocks: number, parts = 3): string[] {
  const cut = Array.from({ length: parts + 1 }, (_, i) => Math.round((i * numBlocks) / parts))
  return cut.slice(0, -1).map((c, i) => `${c}:${cut[i + 1]}`)
}

export function median (xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y)
  return s[Math.floor(s.length / 2)] ?? 0
}

export interface HopTiming { wallMs: number, computeMs: number }
export interface DecodeStep { ms: number, hops: HopTiming[] }

/**
 * Times decode steps at the client through generate()'s onToken: each step's wall time since the
 * previous token and its hops' timings. The first token comes from the prefill step: not counted.
 * `each` runs on every decode step after it is recorded (its index from 1).
 */
export function decodeStepTimer (timings: () => HopTiming[], each?: (step: number) => void): { steps: DecodeStep[], onToken: () => void } {
  const steps: DecodeStep[] = []
  let tokens = 0
  let last = 0
  return {
    steps,
    onToken: () => {
      const now = performance.now()
      if (tokens++ > 0) {
        steps.push({ ms: now - last, hops: timings() })
        each?.(steps.length)
      }
      last = now
    }
  }
}
