import type { Span, KVCache } from './span.ts'

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
  truncate (length: number): Promise<void>
  close (): Promise<void>
}

export function cacheSession (span: Span, cache: KVCache): SpanSession {
  return {
    get length () { return cache.length },
    get bytes () { return cache.bytes() },
    forward: async (hidden, tokens, positions) => await span.forward(hidden, tokens, cache, positions),
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
