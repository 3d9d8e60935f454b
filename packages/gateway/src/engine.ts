// The generation core every API shares: prompts to ids, one swarm session per request,
// stop strings, logprobs, cancellation, concurrency and metrics.
import { generate, logSoftmax, StreamDecoder, renderChatTemplate, TemplateError, validateSampling, SpeculativeError, encodeOffThread } from '@plexus/runtime'
import type { TokenizerPool, ModelConfig, ModelHead, SessionPipeline, TextTokenizer, SamplingOptions, ChatMessage, ChatTool, TokenConstraint, GenerateResult, Drafter } from '@plexus/runtime'
import { componentLog } from '@plexus/p2p'
import { badRequest } from './errors.ts'
import type { GatewayMetrics } from './metrics.ts'
import { Semaphore } from './semaphore.ts'
import { planDrafts } from './speculation.ts'
import type { GatewaySpeculation } from './speculation.ts'

const log = componentLog('gateway', 'engine')

/** What the gateway needs of a model (the client's `OpenModel` fits). */
export interface GatewayModel {
  config: ModelConfig
  head: ModelHead
  tokenizer?: TextTokenizer
  tokenizerConfig?: Record<string, unknown>
  manifest?: { id: string, name: string }
  session (maxLength: number, opts?: { trust?: 'fast' | 'verified' }): Promise<SessionPipeline>
}

export interface TopLogprob { id: number, text: string, logprob: number }
export interface TokenLogprob extends TopLogprob { top: TopLogprob[] }

/** Text completed by one token (may be "" while a character or a possible stop string is held back). */
export interface Chunk { text: string, token?: TokenLogprob }

export interface RunRequest {
  promptIds: number[]
  maxTokens: number
  sampling: SamplingOptions
  stop?: string[]
  /** Absent: no logprobs; N: the chosen token's plus the N most likely. */
  logprobs?: number
  /** X-Plexus-Trust: 'verified' spot-checks the servers (rolling back a wrong step). */
  trust?: 'fast' | 'verified'
  /** Restricts the tokens sampled (structured output, forced tool calls); one per run, disposed by it. */
  constraint?: TokenConstraint
  signal: AbortSignal
  onChunk?: (c: Chunk) => void | Promise<void>
}

export interface RunResult {
  text: string
  tokenIds: number[]
  finishReason: 'stop' | 'length'
  /** The stop string that ended generation, if one did. */
  stopSequence?: string
  promptTokens: number
  completionTokens: number
  tokens: TokenLogprob[]
  seconds: { prefill: number, decode: number }
  /** Drafts proposed and accepted, when the request was decoded speculatively. */
  speculation?: GenerateResult['speculation']
}

export const MAX_TOP_LOGPROBS = 20
/** Bytes of prompt text per position of the context beyond which a prompt is refused untokenized. */
export const MAX_PROMPT_BYTES_PER_TOKEN = 16

/** Thrown from onToken to end generate() early once a stop string appears. */
class StopSequence extends Error {
  readonly stop: string
  constructor (stop: string) { super(`stop sequence ${JSON.stringify(stop)}`); this.stop = stop }
}

/**
 * Emits text as it is decoded, holding back the tail that could still grow into a stop string,
 * and cuts at the first stop string found.
 */
class StopFilter {
  readonly #stops: string[]
  #pending = ''
  text = ''

  constructor (stops: string[]) { this.#stops = stops.filter(s => s !== '') }

  /** Returns the text now safe to emit, and the stop string if one completed. */
  push (delta: string): { emit: string, stop?: string } {
    this.#pending += delta
    let cut = -1
    let hit: string | undefined
    for (const s of this.#stops) {
      const at = this.#pending.indexOf(s)
      if (at >= 0 && (cut < 0 || at < cut)) { cut = at; hit = s }
    }
    if (hit != null) return this.#take(this.#pending.slice(0, cut), hit)
    let hold = 0
    for (const s of this.#stops) {
      for (let k = Math.min(s.length - 1, this.#pending.length); k > hold; k--) {
        if (this.#pending.endsWith(s.slice(0, k))) { hold = k; break }
      }
    }
    const emit = this.#pending.slice(0, this.#pending.length - hold)
    this.#pending = this.#pending.slice(emit.length)
    return this.#take(emit)
  }

  /** Whatever is still held (generation ended without completing a stop string). */
  flush (): string { const { emit } = this.#take(this.#pending); return emit }

  #take (emit: string, stop?: string): { emit: string, stop?: string } {
    this.#pending = stop != null ? '' : this.#pending
    this.text += emit
    return { emit, stop }
  }
}

export class Engine {
  readonly model: GatewayModel
  readonly metrics: GatewayMetrics
  readonly #slots: Semaphore
  readonly #speculate?: GatewaySpeculation
  readonly #tokenizers?: TokenizerPool

  /**
   * `slots`: generations at once, shared with the gateway's other models' engines; `speculate`: draft
   * for every request that allows it; `tokenizers`: the worker threads long prompts are tokenized in
   * (default: the process's own pool).
   */
  constructor (model: GatewayModel, metrics: GatewayMetrics, opts: { slots?: Semaphore, speculate?: GatewaySpeculation, tokenizers?: TokenizerPool } = {}) {
    this.model = model
    this.metrics = metrics
    this.#slots = opts.slots ?? new Semaphore(16)
    this.#speculate = opts.speculate
    this.#tokenizers = opts.tokenizers
  }

  get contextLength (): number { return this.model.config.maxPositions }

  get tokenizer (): TextTokenizer {
    if (this.model.tokenizer == null) throw badRequest('this model has no tokenizer.json: give the prompt as an array of token ids (POST /v1/completions)')
    return this.model.tokenizer
  }

  /** Text prompt to ids, with the tokenizer's BOS. */
  async encodeText (text: string): Promise<number[]> {
    const tok = this.tokenizer
    this.checkPromptBytes(text, 'prompt')
    return await this.encode(tok, text, true)
  }

  /**
   * Text to ids off the event loop when it is long (a worker thread, behind a bounded queue and a
   * time budget: TokenizerError, answered 503 `tokenizer_busy` or 400 `tokenizer_timeout`).
   */
  async encode (tok: TextTokenizer, text: string, addSpecialTokens: boolean): Promise<number[]> {
    const opts = { addSpecialTokens }
    return this.#tokenizers != null ? await this.#tokenizers.encode(tok, text, opts) : await encodeOffThread(tok, text, opts)
  }

  /**
   * Tokenizing costs about 1 ms per KiB (4 MB: seconds of a worker's time, more for crafted text):
   * text that cannot fit the context is refused before it is tokenized. A token spells a few bytes
   * (English ≈ 4); more than MAX_PROMPT_BYTES_PER_TOKEN per position of the context cannot be an
   * honest prompt.
   */
  checkPromptBytes (text: string, param: string): void {
    const limit = this.contextLength * MAX_PROMPT_BYTES_PER_TOKEN
    // UTF-8 has at least as many bytes as UTF-16 code units: the cheap test first
    if (text.length > limit || Buffer.byteLength(text) > limit) {
      throw badRequest(`the prompt is ${Buffer.byteLength(text)} bytes: more than this model's context of ${this.contextLength} tokens can hold (at most ${limit} bytes, ${MAX_PROMPT_BYTES_PER_TOKEN} per token); it was not tokenized`, { param, code: 'context_length_exceeded' })
    }
  }

  /** Messages (and tools) through the model's chat template; the rendered text carries its own BOS. */
  async encodeChat (messages: ChatMessage[], tools?: ChatTool[]): Promise<number[]> {
    const tok = this.tokenizer
    const cfg = this.model.tokenizerConfig
    if (cfg == null) throw badRequest('this model has no tokenizer_config.json with a chat_template: use a completions endpoint')
    // the messages' own text may already be more than the context holds: refused before rendering
    this.checkPromptBytes(messages.map(m => m.content ?? '').join(''), 'messages')
    let text: string
    try {
      // off the event loop, within a time budget: the template came with the model
      text = await renderChatTemplate(cfg, messages, { addGenerationPrompt: true, tools })
    } catch (err) {
      throw badRequest(`cannot format the messages with the model's chat template: ${(err as Error).message}`, { param: 'messages', ...(err instanceof TemplateError ? { code: err.code } : {}) })
    }
    this.checkPromptBytes(text, 'messages')
    return await this.encode(tok, text, false)
  }

  checkIds (ids: number[], param = 'prompt'): void {
    if (ids.length === 0) throw badRequest('the prompt is empty', { param })
    const V = this.model.config.vocabSize
    const bad = ids.find(id => !Number.isInteger(id) || id < 0 || id >= V)
    if (bad !== undefined) throw badRequest(`token id ${String(bad)} is outside the vocabulary (0..${V - 1})`, { param })
  }

  /** `requested` checked against the context; absent: what is left of it, at most `fallback`. */
  maxTokens (promptTokens: number, requested: number | undefined, fallback: number, param = 'max_tokens'): number {
    const left = this.contextLength - promptTokens
    if (requested == null) {
      if (left <= 0) throw badRequest(`the prompt (${promptTokens} tokens) fills the model's context of ${this.contextLength}`, { param: 'messages', code: 'context_length_exceeded' })
      return Math.min(left, fallback)
    }
    if (!Number.isInteger(requested) || requested < 1) throw badRequest(`${param} must be a positive integer (got ${JSON.stringify(requested)})`, { param })
    if (requested > left) {
      throw badRequest(`this model's context is ${this.contextLength} tokens: the prompt (${promptTokens}) plus ${param} (${requested}) exceed it`, { param, code: 'context_length_exceeded' })
    }
    return requested
  }

  checkSampling (s: SamplingOptions): void {
    try { validateSampling(s) } catch (err) { throw badRequest((err as Error).message) }
  }

  /** One generation on its own session; the session is closed (and the constraint disposed) however it ends. */
  async run (req: RunRequest): Promise<RunResult> {
    try {
      this.checkIds(req.promptIds)
      const release = await this.#slots.acquire(req.signal)
      try {
        return await this.#run(req)
      } finally {
        release()
      }
    } finally {
      req.constraint?.dispose?.()
    }
  }

  async #run (req: RunRequest): Promise<RunResult> {
    const { model, metrics } = this
    const tok = model.tokenizer
    const eos = tok != null && tok.eosTokenIds.length > 0 ? tok.eosTokenIds : model.config.eosTokenIds
    const decoder = tok != null ? new StreamDecoder(tok, { skipSpecialTokens: true }) : undefined
    const filter = new StopFilter(req.stop ?? [])
    const tokens: TokenLogprob[] = []
    const ids: number[] = []
    const tokenText = (id: number): string => tok?.decode([id]) ?? String(id)

    const maxLength = Math.min(this.contextLength, req.promptIds.length + req.maxTokens)
    const trust = req.trust ?? 'fast'
    const plan = this.#speculate != null ? await planDrafts(this.#speculate, { maxLength, vocabSize: model.config.vocabSize, trust }) : undefined
    if (plan != null && 'plain' in plan) log.debug(`decoding a request plainly, without speculation: ${plan.plain}`)
    const drafter: Drafter | undefined = plan != null && 'drafter' in plan ? plan.drafter : undefined
    let session: SessionPipeline
    try {
      session = await model.session(maxLength, { trust })
    } catch (err) {
      await drafter?.close()
      throw err
    }
    metrics.openSessions.inc()
    let finishReason: 'stop' | 'length' = 'length'
    let stopSequence: string | undefined
    let speculation: RunResult['speculation']
    const t0 = performance.now()
    let tPrev = t0
    let tFirst = t0
    try {
      req.signal.throwIfAborted()
      const decode = async (speculative: boolean): Promise<GenerateResult> => await generate(model.head, session, req.promptIds, {
        speculative: speculative && drafter != null ? { drafter, k: this.#speculate!.k } : undefined,
        maxTokens: req.maxTokens,
        ...req.sampling,
        eosTokenIds: eos,
        constraint: req.constraint,
        signal: req.signal,
        // each token comes with the row it was sampled from: its logprobs
        onToken: async (id, row) => {
          const now = performance.now()
          metrics.tokenLatency.observe({ phase: ids.length === 0 ? 'prefill' : 'decode' }, (now - tPrev) / 1000)
          if (ids.length === 0) tFirst = now
          tPrev = now
          metrics.generatedTokens.inc()
          ids.push(id)
          let token: TokenLogprob | undefined
          if (req.logprobs != null) {
            const lp = logSoftmax(row)
            const top = topK(lp, req.logprobs).map(i => ({ id: i, text: tokenText(i), logprob: lp[i] }))
            token = { id, text: tokenText(id), logprob: lp[id], top }
            tokens.push(token)
          }
          const { emit, stop } = filter.push(decoder?.push(id) ?? '')
          await req.onChunk?.({ text: emit, token })
          if (stop != null) throw new StopSequence(stop)
        }
      })
      let r: GenerateResult
      try {
        r = await decode(true)
      } catch (err) {
        // refused before its first step (a session that checks its servers, or cannot roll back): plain decoding instead
        if (!(err instanceof SpeculativeError) || ids.length > 0) throw err
        log.debug(`decoding a request plainly, without speculation: ${err.message}`)
        r = await decode(false)
      }
      speculation = r.speculation
      if (speculation != null) {
        metrics.draftTokens.inc({ result: 'accepted' }, speculation.accepted)
        metrics.draftTokens.inc({ result: 'rejected' }, speculation.drafted - speculation.accepted)
      }
      finishReason = r.finishReason
      const rest = filter.push(decoder?.flush() ?? '')
      const tail = rest.stop != null ? rest.emit : rest.emit + filter.flush()
      if (rest.stop != null) { finishReason = 'stop'; stopSequence = rest.stop }
      if (tail !== '') await req.onChunk?.({ text: tail })
    } catch (err) {
      if (!(err instanceof StopSequence)) throw err
      finishReason = 'stop'
      stopSequence = err.stop
    } finally {
      metrics.openSessions.dec()
      await session.close().catch(() => {})
      await drafter?.close().catch(() => {})
    }
    const tEnd = performance.now()
    return {
      text: filter.text,
      tokenIds: ids,
      finishReason,
      stopSequence,
      promptTokens: req.promptIds.length,
      completionTokens: ids.length,
      tokens,
      seconds: { prefill: (tFirst - t0) / 1000, decode: (tEnd - tFirst) / 1000 },
      ...(speculation != null ? { speculation } : {})
    }
  }
}

/** Indices of the k largest values, largest first. */
function topK (x: Float64Array, k: number): number[] {
  if (k <= 0) return []
  const best: number[] = []
  for (let i = 0; i < x.length; i++) {
    if (best.length < k || x[i] > x[best[best.length - 1]]) {
      let j = Math.min(best.length, k - 1)
      best[j] = i
      while (j > 0 && x[best[j]] > x[best[j - 1]]) { [best[j], best[j - 1]] = [best[j - 1], best[j]]; j-- }
    }
  }
  return best
}
