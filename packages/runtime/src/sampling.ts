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
  private readonly seed: number
  private random: () => number

  constructor (opts: SamplingOptions = {}) {
    validateSampling(opts)
    this.opts = opts
    this.seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32)
    this.random = seededRandom(this.seed)
  }

  /** Back to the state after `samples` draws (a verified session rolled back). */
  rewind (samples: number): void {
    this.random = seededRandom(this.seed)
    if (!this.greedy) for (let i = 0; i < samples; i++) this.random()
  }

  get greedy (): boolean { return (this.opts.temperature ?? 0) === 0 }

  sample (logits: ArrayLike<number>): number {
    if (this.greedy) return argmax(logits)
    const T = this.opts.temperature!
    const V = logits.length
    // Candidates sorted by logit, cut by top-k, then by top-p on the tempered distribution.
    let idx = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a])
    const k = this.opts.topK ?? 0
    if (k > 0 && k < V) idx = idx.slice(0, k)
    const max = logits[idx[0]]
    const p = idx.map(i => Math.exp((logits[i] - max) / T))
    let total = p.reduce((s, x) => s + x, 0)
    const topP = this.opts.topP ?? 1
    if (topP < 1) {
      let acc = 0
      let n = 0
      while (n < p.length) { acc += p[n] / total; n++; if (acc >= topP) break }
      idx = idx.slice(0, n)
      p.length = n
      total = p.reduce((s, x) => s + x, 0)
    }
    let r = this.random() * total
    for (let i = 0; i < p.length; i++) {
      r -= p[i]
      if (r < 0) return idx[i]
    }
    return idx[idx.length - 1]
  }
}
