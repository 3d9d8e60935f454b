export interface SamplingOptions {
  /** 0 (the default) is greedy decoding. */
  temperature?: number
  /** Keep only the k most likely tokens (0 or absent: all). */
  topK?: number
  /** Keep the smallest set of tokens whose probability reaches p (1 or absent: all). */
  topP?: number
  /** Seed for reproducible sampling. */
  seed?: number
}

/** sfc32: a small, fast, well-tested PRNG; seeded deterministically from one integer. */
export function seededRandom (seed: number): () => number {
  let a = 0x9e3779b9; let b = 0x243f6a88; let c = 0xb7e15162; let d = seed >>> 0
  const next = (): number => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0
    let t = (a + b) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    d = (d + 1) | 0
    t = (t + d) | 0
    c = (c + t) | 0
    return (t >>> 0) / 4294967296
  }
  for (let i = 0; i < 15; i++) next()
  return next
}

export function argmax (x: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i
  return best
}

/** log-softmax in float64 (for logprobs). */
export function logSoftmax (logits: ArrayLike<number>): Float64Array {
  let max = -Infinity
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i]
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max)
  const lse = max + Math.log(sum)
  const out = new Float64Array(logits.length)
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse
  return out
}

export function validateSampling (o: SamplingOptions): void {
  const t = o.temperature ?? 0
  if (!(Number.isFinite(t) && t >= 0)) throw new RangeError(`temperature must be ≥ 0 (got ${o.temperature})`)
  if (o.topK != null && !(Number.isInteger(o.topK) && o.topK >= 0)) throw new RangeError(`top-k must be a non-negative integer (got ${o.topK})`)
  if (o.topP != null && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`top-p must be in (0, 1] (got ${o.topP})`)
  if (o.seed != null && !Number.isInteger(o.seed)) throw new RangeError(`seed must be an integer (got ${o.seed})`)
}

export class Sampler {
  private readonly opts: SamplingOptions
  /** The seed in use (drawn at random when none was given). */
  readonly seed: number
  private random: () => number

  constructor (opts: SamplingOptions = {}) {
    validateSampling(opts)
    this.opts = opts
    this.seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32)
    this.random = seededRandom(this.seed)
  }

  /** Back to the state after `samples` draws (the pipeline went back: `confirm`). */
  rewind (samples: number): void {
    this.random = seededRandom(this.seed)
    if (!this.greedy) for (let i = 0; i < samples; i++) this.random()
  }

  get greedy (): boolean { return (this.opts.temperature ?? 0) === 0 }

  sample (logits: ArrayLike<number>): number {
    if (this.greedy) return argmax(logits)
    return this.pick(this.distribution(logits), this.random())
  }

  /**
   * The distribution sampling draws from (temperature, top-k, top-p applied; masked tokens left
   * out): candidates by logit, highest first (equal logits: lower id first), unnormalized weights.
   */
  distribution (logits: ArrayLike<number>): TokenDistribution {
    const T = this.opts.temperature ?? 0
    if (T === 0) throw new RangeError('greedy decoding has no sampling distribution')
    const idx = rankByLogit(logits, this.opts.topK ?? 0)
    if (idx.length === 0) throw new RangeError('every token is masked: nothing can be sampled')
    const max = logits[idx[0]]
    const p = new Float64Array(idx.length)
    let total = 0
    for (let i = 0; i < idx.length; i++) { p[i] = Math.exp((logits[idx[i]] - max) / T); total += p[i] }
    let n = idx.length
    const topP = this.opts.topP ?? 1
    if (topP < 1) {
      let acc = 0
      n = 0
      while (n < idx.length) { acc += p[n] / total; n++; if (acc >= topP) break }
      total = 0
      for (let i = 0; i < n; i++) total += p[i]
    }
    return { ids: idx.subarray(0, n), weights: p.subarray(0, n), total }
  }

  /** The token a uniform draw `u` ∈ [0, 1) picks from `d` (inverse CDF in rank order). */
  pick (d: TokenDistribution, u: number): number {
    let r = u * d.total
    for (let i = 0; i < d.ids.length; i++) {
      r -= d.weights[i]
      if (r < 0) return d.ids[i]
    }
    return d.ids[d.ids.length - 1]
  }
}

/** A sampling distribution: candidate ids (highest logit first) and their unnormalized weights. */
export interface TokenDistribution {
  ids: Uint32Array
  weights: Float64Array
  total: number
}

/** `d` as normalized probabilities over the whole vocabulary (0 outside its candidates). */
export function denseProbabilities (d: TokenDistribution, vocabSize: number): Float64Array {
  const out = new Float64Array(vocabSize)
  for (let i = 0; i < d.ids.length; i++) out[d.ids[i]] = d.weights[i] / d.total
  return out
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/**
 * Token ids of the finite (float32) logits in descending order (ties: ascending id), the first `k` only
 * when k > 0. Each (logit, id) is packed into one float64 key whose numeric order is that order,
 * so a typed-array sort (or, for top-k, a k-heap) does what a comparator sort over the whole
 * vocabulary did 10× slower: ~12 ms instead of ~120 ms per token at a 128k vocabulary.
 */
export function rankByLogit (logits: ArrayLike<number>, k = 0): Uint32Array {
  const V = logits.length
  const bits = Math.max(1, Math.ceil(Math.log2(V)))
  if (bits > 21) throw new RangeError(`a vocabulary of ${V} tokens is too large to rank (at most 2^21)`)
  const scale = 2 ** bits
  const keys = new Float64Array(V)
  let n = 0
  for (let i = 0; i < V; i++) {
    const x = logits[i]
    if (!(x > -Infinity)) continue // masked (or NaN): never a candidate
    f32[0] = x === 0 ? 0 : x // -0 ranks as 0
    const u = u32[0]
    // float32 bits → an unsigned integer in ascending float order, then flipped: descending
    const ascending = (u & 0x80000000) !== 0 ? (~u >>> 0) : (u | 0x80000000) >>> 0
    keys[n++] = (0xffffffff - ascending) * scale + i
  }
  let ranked: Float64Array = keys.subarray(0, n)
  if (k > 0 && k < n) ranked = smallest(ranked, k)
  ranked.sort()
  const out = new Uint32Array(ranked.length)
  for (let j = 0; j < ranked.length; j++) out[j] = ranked[j] % scale
  return out
}

/** The k smallest values (unordered), through a max-heap of size k. */
function smallest (values: Float64Array, k: number): Float64Array {
  const heap = values.slice(0, k)
  const down = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < k && heap[l] > heap[m]) m = l
      if (r < k && heap[r] > heap[m]) m = r
      if (m === i) return
      const t = heap[i]; heap[i] = heap[m]; heap[m] = t
      i = m
    }
  }
  for (let i = (k >> 1) - 1; i >= 0; i--) down(i)
  for (let i = k; i < values.length; i++) {
    if (values[i] < heap[0]) { heap[0] = values[i]; down(0) }
  }
  return heap
}
