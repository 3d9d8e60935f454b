import type { GenerateResult } from './generate.ts'

/** Times of a generation (performance.now()): start, prefill done, last token. */
export interface GenerationTimes { t0: number, t1: number, t2: number }

/** The result of a generation from its tokens and times; speeds count decode steps after the first token. */
export function generationResult (tokenIds: number[], stopped: boolean, promptTokens: number, t: GenerationTimes, logits?: Float32Array[]): GenerateResult {
  const prefillSeconds = (t.t1 - t.t0) / 1000
  const decodeSeconds = (t.t2 - t.t1) / 1000
  const decodeSteps = Math.max(0, tokenIds.length - 1)
  return {
    tokenIds,
    finishReason: stopped ? 'stop' : 'length',
    promptTokens,
    prefillSeconds,
    decodeSeconds,
    prefillTokensPerSecond: promptTokens / prefillSeconds,
    tokensPerSecond: decodeSteps > 0 ? decodeSteps / decodeSeconds : 0,
    logits
  }
}
