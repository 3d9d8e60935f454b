import type { ModelHead } from './head.ts'
import { Sampler, seededRandom, argmax, denseProbabilities } from './sampling.ts'
import type { TokenDistribution } from './sampling.ts'
import type { SessionPipeline, GenerateOptions, GenerateResult } from './generate.ts'
import { SpeculativeError } from './drafters.ts'
import { generationResult, GeneratedTokens } from './generate-result.ts'
import type { Drafter, DraftChoice } from './drafters.ts'

/** Most draft tokens one round may propose (the target's step then has k + 1 positions). */
export const MAX_SPECULATE = 16

export interface SpeculativeOptions {
  drafter: Drafter
  /** Most draft tokens per round (1..MAX_SPECULATE). */
  k: number
  /**
   * Adapt the round's draft length to the acceptance rate (default on): one more after a round
   * accepted whole, one fewer when less than half was, within [1, k]; a draft rejected outright at
   * length 1 pauses drafting for 2, 4, … 32 rounds (plain steps), until a draft is accepted again.
   */
  adaptive?: boolean
}

export interface SpeculationStats {
  drafter: string
  rounds: number
  drafted: number
  accepted: number
  /** accepted / drafted (0 when nothing was drafted). */
  acceptanceRate: number
  /** Target steps taken after the prefill (plain decoding takes one per token). */
  targetSteps: number
  /** The draft length the adaptation ended at. */
  finalK: number
}

export type SpeculativeResult = GenerateResult & { speculation: SpeculationStats }

/**
 * A pipeline that can drop positions: speculative decoding rolls the target's caches back past
 * the first rejected draft.
 */
type Rollbackable = SessionPipeline & { truncate: (length: number) => Promise<void> }

/**
 * Speculative decoding: per round the drafter proposes up to k tokens, the target computes all of
 * them in one (k + 1)-position step, the longest prefix it agrees with is kept plus one token of
 * its own (the correction at the first rejection, or a bonus token after the last draft), and its
 * caches are truncated back to what was kept.
 *
 * Greedy: a draft is accepted iff it is the target's argmax: output identical to plain decoding.
 * Sampling (standard speculative sampling): draft x from q is accepted with probability
 * min(1, p(x)/q(x)), else the token is drawn from norm(max(0, p − q)), so every token follows the
 * target's distribution p whatever the drafter. Draws: the token at output index i (a model
 * draft, or the target's bonus token) uses the i-th draw of the seed's stream, exactly as plain
 * sampling does; acceptance tests and corrections use a second stream of the same seed. With a
 * drafter whose q equals p every draft is accepted and the output is the plain sampled run of
 * that seed.
 */
export async function generateSpeculative (head: ModelHead, pipeline: SessionPipeline, promptIds: number[], opts: GenerateOptions & { speculative: SpeculativeOptions }): Promise<SpeculativeResult> {
  const spec = opts.speculative
  if (!Number.isInteger(spec.k) || spec.k < 1 || spec.k > MAX_SPECULATE) throw new SpeculativeError('bad-speculate', `speculate must be an integer in 1..${MAX_SPECULATE} (got ${spec.k})`)
  // a pipeline without checks confirms everything at once ({ confirmed: Infinity }); one with them
  // confirms nothing before its first step
  const c = await pipeline.confirm?.(false)
  if (c != null && !('confirmed' in c && c.confirmed === Infinity)) throw new SpeculativeError('verified-trust', 'speculative decoding rolls the servers\' caches back past rejected drafts, which spot checks (--trust verified) cannot follow: use --trust fast, or leave out --speculate')
  if (pipeline.truncate == null) throw new SpeculativeError('no-rollback', 'this session cannot roll its caches back (no truncate): speculative decoding needs it')
  const target = pipeline as Rollbackable
  if (promptIds.length === 0) throw new RangeError('the prompt is empty: give at least one token')
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new RangeError(`max tokens must be a non-negative integer (got ${opts.maxTokens})`)
  if (promptIds.length + opts.maxTokens > head.config.maxPositions) {
    throw new RangeError(`prompt (${promptIds.length}) + max tokens (${opts.maxTokens}) exceed the model's context of ${head.config.maxPositions}`)
  }
  const P = promptIds.length
  const V = head.config.vocabSize
  const sampler = new Sampler(opts)
  const greedy = sampler.greedy
  const tokenDraws = drawStream(sampler.seed)
  const acceptDraw = seededRandom(sampler.seed ^ 0x5bd1e995)
  const eos = new Set(opts.eosTokenIds ?? [])
  const constraint = opts.constraint
  const out = new GeneratedTokens(P, opts)
  const ended = (): boolean => out.length > 0 && (eos.has(out.last!) || constraint?.done() === true)
  const stats: SpeculationStats = { drafter: spec.drafter.kind, rounds: 0, drafted: 0, accepted: 0, acceptanceRate: 0, targetSteps: 0, finalK: spec.k }

  const emit = async (id: number, row: Float32Array): Promise<void> => {
    constraint?.accept(id)
    out.push(id, row)
    await out.deliver(Infinity)
  }
  /** The target's own token from a (masked) row: argmax, or the output index's draw. */
  const own = (row: Float32Array): number => greedy ? argmax(row) : sampler.pick(sampler.distribution(row), tokenDraws(out.length))

  const t0 = performance.now()
  let t1 = 0
  let t2 = 0
  if (opts.maxTokens > 0) {
    opts.signal?.throwIfAborted()
    const hidden = await target.forward(head.embed(promptIds), P)
    t1 = t2 = performance.now()
    const row = await head.logits(hidden, P)
    if (constraint != null) await constraint.mask(row)
    await emit(own(row), row)
  } else {
    await target.forward(head.embed(promptIds), P)
    t1 = t2 = performance.now()
  }
  let k = spec.k
  // a drafter the target keeps rejecting at k = 1 only costs: stop drafting for a while, longer each time
  let pause = 0
  let backoff = 2
  while (out.length < opts.maxTokens && !ended()) {
    opts.signal?.throwIfAborted()
    const context = [...promptIds, ...out.ids]
    const base = out.length
    // the bonus token comes on top of the drafts: never run past max tokens
    const kk = pause > 0 ? 0 : Math.min(k, opts.maxTokens - out.length - 1)
    if (pause > 0) pause--
    const drafts = kk > 0
      ? await spec.drafter.draft(context, kk, (row, i) => greedy ? { id: argmax(row) } : chooseDraft(sampler, row, tokenDraws(base + i)))
      : []
    const d = drafts.length
    for (const c of drafts) if (!Number.isInteger(c.id) || c.id < 0 || c.id >= V) throw new RangeError(`the drafter proposed token ${c.id}, outside the vocabulary (0..${V - 1})`)
    const hidden = await target.forward(head.embed([out.last!, ...drafts.map(c => c.id)]), d + 1)
    const rows = await head.logits(hidden, d + 1, d + 1)
    stats.targetSteps++
    let accepted = 0
    for (let i = 0; i <= d && !ended(); i++) {
      const row = rows.slice(i * V, (i + 1) * V)
      if (constraint != null) await constraint.mask(row)
      if (i === d) { await emit(own(row), row); break }
      const x = drafts[i]
      if (greedy) {
        const best = argmax(row)
        if (best !== x.id) { await emit(best, row); break }
      } else {
        const p = sampler.distribution(row)
        const verdict = verify(p, x, V, acceptDraw)
        if (verdict !== x.id) { await emit(verdict, row); break }
      }
      accepted++
      await emit(x.id, row)
    }
    t2 = performance.now()
    stats.rounds++
    stats.drafted += d
    stats.accepted += accepted
    // the target holds the positions of every token but the last one emitted, as plain decoding does
    const keep = P + out.length - 1
    const holds = P + base + d
    if (holds > keep) await target.truncate(keep)
    if (spec.adaptive !== false && d > 0) {
      if (accepted === 0 && k === 1) { pause = backoff; backoff = Math.min(32, 2 * backoff) } else if (accepted > 0) backoff = 2
      if (accepted === d && d === k) k = Math.min(spec.k, k + 1)
      else if (accepted < d / 2) k = Math.max(1, k - 1)
    }
  }
  stats.finalK = k
  stats.acceptanceRate = stats.drafted > 0 ? stats.accepted / stats.drafted : 0
  return { ...generationResult(out.ids, ended(), P, { t0, t1, t2 }, out.logits()), speculation: stats }
}

/** A model draft drawn from the drafter's own sampling distribution with draw `u`. */
function chooseDraft (sampler: Sampler, row: Float32Array, u: number): DraftChoice {
  const q = sampler.distribution(row)
  return { id: sampler.pick(q, u), q }
}

/**
 * Speculative sampling's test of draft `x` against the target's distribution `p`: `x` when
 * accepted (probability min(1, p(x)/q(x))), else a token drawn from norm(max(0, p − q)).
 * A draft proposed outright (no q) is a point mass: accepted with probability p(x).
 */
export function verify (p: TokenDistribution, x: DraftChoice, vocabSize: number, draw: () => number): number {
  const pd = denseProbabilities(p, vocabSize)
  const qd = x.q != null ? denseProbabilities(x.q, vocabSize) : undefined
  const qx = qd != null ? qd[x.id] : 1
  const px = pd[x.id]
  if (qx > 0 && draw() < px / qx) return x.id
  // the residual: the target's mass the drafter under-proposed
  let total = 0
  for (let i = 0; i < vocabSize; i++) {
    const r = pd[i] - (qd != null ? qd[i] : (i === x.id ? 1 : 0))
    pd[i] = r > 0 ? r : 0
    total += pd[i]
  }
  // p ≤ q everywhere means p = q up to rounding: the draft could not have been rejected
  if (!(total > 0)) return x.id
  let r = draw() * total
  let last = x.id
  for (let i = 0; i < vocabSize; i++) {
    if (pd[i] === 0) continue
    last = i
    r -= pd[i]
    if (r < 0) return i
  }
  return last
}

/** Random access to a seed's stream of uniform draws: the i-th draw, whatever was asked before. */
function drawStream (seed: number): (i: number) => number {
  const next = seededRandom(seed)
  const draws: number[] = []
  return (i) => {
    while (draws.length <= i) draws.push(next())
    return draws[i]
  }
}
