import type { Span, KVCache } from './span.ts'
import type { GpuHeadTail } from './webgpu/head.ts'

/**
 * Blocks `[start, end)` ready to serve sessions, wherever they live: in this thread
 * (`inProcessRunner`) or in a worker thread with its own backend heap (`WorkerSpanRunner`).
 */
export interface SpanRunner {
  readonly start: number
  readonly end: number
  /** A session on blocks `[start, end)` ⊆ `[this.start, this.end)` (all by default). */
  open (maxLength: number, start?: number, end?: number): Promise<SpanSession>
  dispose (): Promise<void>
}

/** One session's state on a span: its KV cache. Steps continue at `length`. */
export interface SpanSession {
  readonly length: number
  /** Bytes of KV cache held. */
  readonly bytes: number
  forward (hidden: Float32Array, tokens: number, positions?: ArrayLike<number>): Promise<Float32Array>
  /** A webgpu span in this thread: the step, then the LM head on its last row, in one submission (Span.forwardLogits). */
  forwardLogits?: (hidden: Float32Array, tokens: number, tail: GpuHeadTail) => Promise<Float32Array>
  truncate (length: number): Promise<void>
  close (): Promise<void>
}

export function cacheSession (span: Span, cache: KVCache): SpanSession {
  return {
    get length () { return cache.length },
    get bytes () { return cache.bytes() },
    forward: async (hidden, tokens, positions) => await span.forward(hidden, tokens, cache, positions),
    forwardLogits: span.engine !== 'webgpu' ? undefined : async (hidden, tokens, tail) => await span.forwardLogits(hidden, tokens, cache, tail),
    truncate: async (n) => { cache.truncate(n) },
    close: async () => { cache.dispose() }
  }
}

export function inProcessRunner (span: Span): SpanRunner {
  return {
    start: span.start,
    end: span.end,
    open: async (maxLength, start, end) => cacheSession(span, span.newCache(maxLength, start, end)),
    dispose: async () => { span.dispose() }
  }
}

/** Consecutive runners (e.g. one per worker thread) served as one span. */
export function chainRunners (runners: SpanRunner[]): SpanRunner {
  if (runners.length === 1) return runners[0]
  for (let i = 1; i < runners.length; i++) {
    if (runners[i].start !== runners[i - 1].end) throw new Error(`runners are not consecutive at block ${runners[i].start}`)
  }
  const start = runners[0].start
  const end = runners[runners.length - 1].end
  return {
    start,
    end,
    open: async (maxLength, from = start, to = end) => {
      const parts: SpanSession[] = []
      try {
        for (const r of runners) {
          const a = Math.max(from, r.start)
          const b = Math.min(to, r.end)
          if (a < b) parts.push(await r.open(maxLength, a, b))
        }
      } catch (err) {
        for (const p of parts) await p.close()
        throw err
      }
      const before = parts.slice(0, -1)
      const last = parts[parts.length - 1]
      return {
        get length () { return parts[0].length },
        get bytes () { return parts.reduce((n, p) => n + p.bytes, 0) },
        forward: async (hidden, tokens, positions) => await through(parts, hidden, tokens, positions),
        forwardLogits: last.forwardLogits == null ? undefined : async (hidden, tokens, tail) => await last.forwardLogits!(await through(before, hidden, tokens), tokens, tail),
        truncate: async (n) => { for (const p of parts) await p.truncate(n) },
        close: async () => { for (const p of parts) await p.close() }
      }
    },
    dispose: async () => { for (const r of runners) await r.dispose() }
  }
}

/** A step through consecutive sessions, each one's output the next one's input. */
export async function through (sessions: SpanSession[], hidden: Float32Array, tokens: number, positions?: ArrayLike<number>): Promise<Float32Array> {
  let h = hidden
  for (const s of sessions) h = await s.forward(h, tokens, positions)
  return h
}

/**
 * One step of `tokens` rows run as consecutive steps of at most `maxChunk` rows, each attending
 * to the cache so far (what Petals does with long prefills): the attention scores of a step grow
 * with its tokens × the cache, so whole they grow with tokens²; in chunks, linearly. The results
 * equal the whole step's (within float rounding: the same sums, in other matrix shapes). A chunk
 * that fails rolls the session back to where the step began.
 */
export async function forwardInChunks (session: SpanSession, hidden: Float32Array, tokens: number, maxChunk: number): Promise<Float32Array> {
  if (!Number.isInteger(maxChunk) || maxChunk < 1) throw new RangeError(`chunk size must be a positive integer (got ${maxChunk})`)
  if (tokens <= maxChunk) return await session.forward(hidden, tokens)
  const width = hidden.length / tokens
  const out = new Float32Array(hidden.length)
  const start = session.length
  try {
    for (let t = 0; t < tokens; t += maxChunk) {
      const n = Math.min(maxChunk, tokens - t)
      out.set(await session.forward(hidden.slice(t * width, (t + n) * width), n), t * width)
    }
  } catch (err) {
    if (session.length > start) await session.truncate(start).catch(() => {})
    throw err
  }
  return out
}
