// `npm run bench:grammar`: what structured output costs per token. For json_object and a JSON
// schema, on the tiny model shape with small and large vocabularies: the grammar mask
// (xgrammar's bitmask, applying it to the logits, the UTF-8 guard) and accepting the chosen token,
// against the decode step of the same model; plus what compiling costs (once per vocabulary and
// schema, then cached).
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { tmpdir, cpus } from 'node:os'
import { access } from 'node:fs/promises'
import { initBackend, generate, compileGrammar } from '@plexus/runtime'
import type { GrammarSpec, TokenConstraint } from '@plexus/runtime'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { makeModel } from './lib/model-maker.ts'
import { median } from './lib/bench-common.ts'

const { values: a } = parseArgs({
  options: {
    vocabs: { type: 'string', default: '512,32000,128256' },
    generations: { type: 'string', default: '6' },
    tokens: { type: 'string', default: '64' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:grammar -- [--vocabs 512,32000,128256] [--generations N] [--tokens N] [--json-only]

For each vocabulary size, a tiny-shape model (hidden 64, 3 blocks) with that vocabulary (made once
in the temp folder). Per spec (json_object; a 5-field JSON schema), --generations sampled
generations (temperature 1, seeds 0..N-1, at most --tokens tokens) time every mask() and accept()
of the constraint; the same prompts without a grammar give the decode step, sampled (as the
grammar runs) and greedy (no sampling cost). Compile times are the first compile of each spec (the
first includes the vocabulary's one-time setup).\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const vocabs = a.vocabs!.split(',').map(Number)
const generations = Number(a.generations)
const maxTokens = Number(a.tokens)

const SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    active: { type: 'boolean' },
    color: { enum: ['red', 'green', 'blue'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 6 }, maxItems: 3 }
  },
  required: ['name', 'age', 'active', 'color', 'tags'],
  additionalProperties: false
}
const SPECS: Array<{ name: string, spec: GrammarSpec }> = [
  { name: 'json_object', spec: { type: 'json_object' } },
  { name: 'json_schema', spec: { type: 'json_schema', schema: SCHEMA } }
]

const pct = (s: any, stepMs: number): string => `${(100 * (s.mask_ms.mean + s.accept_ms.mean) / stepMs).toFixed(1)}%`
const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length)
const result: any = { machine: { cpus: cpus().length, cpu: cpus()[0]?.model, node: process.version }, generations, max_tokens: maxTokens, vocabularies: [] }

await initBackend()
for (const V of vocabs) result.vocabularies.push(await measure(V))

if (a['json-only'] !== true) {
  process.stdout.write('\n| vocabulary | spec | compile (ms) | tokens | mask (ms/token) | accept (ms/token) | decode step, sampled / greedy (ms) | mask + accept vs sampled / greedy step |\n|---|---|---|---|---|---|---|---|\n')
  for (const v of result.vocabularies) {
    for (const s of v.specs) {
      process.stdout.write(`| ${v.vocab_size} | ${s.spec} | ${s.compile_ms.toFixed(0)}${s.includes_setup === true ? ' (with setup)' : ''} | ${s.tokens} | ${s.mask_ms.mean.toFixed(3)} (median ${s.mask_ms.median.toFixed(3)}) | ${s.accept_ms.mean.toFixed(3)} | ${v.decode_step_ms.toFixed(2)} / ${v.greedy_step_ms.toFixed(2)} | ${pct(s, v.decode_step_ms)} / ${pct(s, v.greedy_step_ms)} |\n`)
    }
  }
}
process.stdout.write(JSON.stringify(result) + '\n')
process.exit(0)

async function modelFor (V: number): Promise<string> {
  const dir = join(tmpdir(), `plexus-bench-grammar-tiny-v${V}`)
  try { await access(join(dir, 'plexus-manifest.json')) } catch {
    log(`making a tiny model with a ${V}-token vocabulary in ${dir}…`)
    await makeModel({ shape: 'tiny', vocab: V, out: dir, seed: 5, name: `tiny-v${V}` })
  }
  return dir
}

/** A constraint whose mask() and accept() calls are timed. */
function timed (c: TokenConstraint, maskMs: number[], acceptMs: number[]): TokenConstraint {
  return {
    mask: async (row) => { const t = performance.now(); await c.mask(row); maskMs.push(performance.now() - t) },
    accept: (id) => { const t = performance.now(); c.accept(id); acceptMs.push(performance.now() - t) },
    rewind: (n) => { c.rewind(n) },
    done: () => c.done(),
    dispose: () => c.dispose?.()
  }
}

async function run (model: OpenModel, seed: number, constraint?: TokenConstraint, temperature = 1): Promise<{ tokens: number, stepMs: number }> {
  const tok = model.tokenizer!
  const prompt = tok.encode(`Record ${seed} as JSON:`)
  const session = await model.session(prompt.length + maxTokens)
  try {
    const r = await generate(model.head, session, prompt, { maxTokens, temperature, seed, eosTokenIds: tok.eosTokenIds, constraint })
    return { tokens: r.tokenIds.length, stepMs: r.tokenIds.length > 1 ? 1000 * r.decodeSeconds / (r.tokenIds.length - 1) : NaN }
  } finally {
    constraint?.dispose?.()
    await session.close()
  }
}

async function measure (V: number): Promise<unknown> {
  const model = await openLocal(await modelFor(V))
  try {
    const tok = model.tokenizer!
    await run(model, 1000) // warm-up: JIT, weights packed
    const steps: number[] = []
    for (let seed = 0; seed < generations; seed++) steps.push((await run(model, seed)).stepMs)
    const decodeStep = median(steps.filter(Number.isFinite))
    const greedy: number[] = []
    for (let seed = 0; seed < generations; seed++) greedy.push((await run(model, seed, undefined, 0)).stepMs)
    const greedyStep = median(greedy.filter(Number.isFinite))
    log(`vocabulary ${V}: decode step ${decodeStep.toFixed(2)} ms sampled, ${greedyStep.toFixed(2)} ms greedy, without a grammar`)
    const specs = []
    let first = true
    for (const { name, spec } of SPECS) {
      const t = performance.now()
      const grammar = await compileGrammar(tok, model.config.vocabSize, spec)
      const compileMs = performance.now() - t
      await run(model, 1000, await grammar.constraint()) // warm-up
      const maskMs: number[] = []
      const acceptMs: number[] = []
      let tokens = 0
      for (let seed = 0; seed < generations; seed++) tokens += (await run(model, seed, timed(await grammar.constraint(), maskMs, acceptMs))).tokens
      log(`  ${name}: compile ${compileMs.toFixed(0)} ms, ${tokens} tokens, mask ${mean(maskMs).toFixed(3)} ms, accept ${mean(acceptMs).toFixed(3)} ms`)
      specs.push({
        spec: name,
        compile_ms: compileMs,
        includes_setup: first,
        tokens,
        mask_ms: { mean: mean(maskMs), median: median(maskMs), max: Math.max(...maskMs) },
        accept_ms: { mean: mean(acceptMs), median: median(acceptMs) }
      })
      first = false
    }
    return { vocab_size: V, decode_step_ms: decodeStep, greedy_step_ms: greedyStep, specs }
  } finally {
    await model.close()
  }
}
