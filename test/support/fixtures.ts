import { readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const FIXTURES = join(ROOT, 'test', 'fixtures', 'models')
export const FIXTURE_NAMES = ['tiny-llama', 'tiny-qwen2-tied-bf16', 'tiny-llama3-sharded-bf16']
/** The Node that runs the project (≥ 24), whichever Node started mocha. */
export const NODE = process.execPath

export interface Golden {
  prompt_ids: number[]
  greedy_new_ids: number[]
  last_prompt_logits: number[]
  step_top5: Array<Array<[number, number]>>
  hidden_at_block_boundaries: { h: number[][][] }
}

export function fixtureDir (name: string): string { return join(FIXTURES, name) }

export function golden (name: string): Golden {
  return JSON.parse(readFileSync(join(fixtureDir(name), 'golden.json'), 'utf8'))
}

export function maxAbsDiff (a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`)
  let m = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i])
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d
  }
  return m
}

const run = promisify(execFile)

/** Runs a CLI (a bin script path) and returns stdout, stderr and the exit code without throwing. */
export async function runCli (bin: string, args: string[], opts: { timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  try {
    const r = await run(NODE, [join(ROOT, bin), ...args], { timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20, env: opts.env ?? process.env })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err: any) {
    return { code: err.code ?? 1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' }
  }
}

export const CLIENT_BIN = 'packages/client/bin/plexus-client.js'
