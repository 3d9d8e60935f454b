// Shared by the benchmarks: the model to measure and the statistics they print.
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { makeModel } from './model-maker.ts'
import type { ShapeName } from './model-maker.ts'

/** `dir` as given, or a float32 model of `shape` made once in the temp folder (reused by later runs). */
export async function benchModel (dir: string | undefined, shape: string, log: (s: string) => void): Promise<string> {
  if (dir != null) return dir
  const made = join(tmpdir(), `plexus-bench-${shape}-f32`)
  try { await access(join(made, 'plexus-manifest.json')) } catch {
    log(`making a ${shape} model in ${made}…`)
    await makeModel({ shape: shape as ShapeName, dtype: 'f32', out: made, seed: 5 })
  }
  return made
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
