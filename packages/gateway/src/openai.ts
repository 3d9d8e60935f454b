// OpenAI's API: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { CompiledGrammar, SamplingOptions } from '@plexus/runtime'
import { badRequest, errorBody, toApiError } from './errors.ts'
import { MAX_TOP_LOGPROBS } from './engine.ts'
import type { Engine, RunResult, TokenLogprob, Chunk } from './engine.ts'
import { resolveModel, newId, unixNow, trustOf } from './context.ts'
import type { GatewayContext } from './context.ts'
import { asBody, optBool, optInt, optNumber, optObject, stopList } from './validate.ts'
import type { Body } from './validate.ts'
import { LazyStream, sse, disconnectSignal } from './stream.ts'
import { FIELDS, refuseUnsupported } from './fields.ts'
import { toolsFor, encodeChat, chatMessages, functionTools, openaiToolRequest } from './tools/index.ts'
import type { ParsedCall, ToolCalls, ToolRun } from './tools/index.ts'
import { openaiCall, openaiCallDeltas } from './tools/wire.ts'
import { openaiResponseFormat, compileFormat } from './response-format.ts'

type Kind = 'chat' | 'text'

interface Job {
  kind: Kind
  model: string
  engine: Engine
  promptIds: number[]
  maxTokens: number
  sampling: SamplingOptions
  stop: string[]
  logprobs?: number
  /** response_format's grammar (structured output). */
  grammar?: CompiledGrammar
  stream: boolean
  includeUsage: boolean
  /** The request's tools: output parsed into calls, a call forced by tool_choice. */
  tools?: ToolCalls
}

function sampling (engine: Engine, b: Body): SamplingOptions {
  const s: SamplingOptions = {
    temperature: optNumber(b, 'temperature') ?? 1,
    topP: optNumber(b, 'top_p'),
    topK: optInt(b, 'top_k'),
    seed: optInt(b, 'seed')
  }
  if (s.temperature! > 2) throw badRequest(`temperature must be between 0 and 2 (got ${s.temperature})`, { param: 'temperature' })
  engine.checkSampling(s)
  return s
}

function streamFlags (b: Body): { stream: boolean, includeUsage: boolean } {
  const stream = optBool(b, 'stream') ?? false
  const so = optObject(b, 'stream_options')
  return { stream, includeUsage: stream && so != null && optBool(so, 'include_usage', 'stream_options') === true }
}

function singleChoice (b: Body): void {
  const n = optInt(b, 'n')
  if (n != null && n !== 1) throw badRequest('n must be 1: this gateway returns one choice per request', { param: 'n' })
}

/** `prompt`: a string, an array of token ids, or a one-element array of either. */
async function promptIds (engine: Engine, b: Body): Promise<number[]> {
  let p = b.prompt
  if (p == null) throw badRequest('missing required field prompt', { param: 'prompt' })
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0]
  if (typeof p === 'string') return await engine.encodeText(p)
  if (Array.isArray(p) && p.every(x => typeof x === 'number')) {
    engine.checkIds(p as number[])
    return p as number[]
  }
  throw badRequest('prompt must be a string or an array of token ids (one prompt per request)', { param: 'prompt' })
}

const bytes = (s: string): number[] => [...Buffer.from(s, 'utf8')]

function chatLogprobs (tokens: TokenLogprob[]): unknown {
  return {
    content: tokens.map(t => ({
      token: t.text,
      logprob: t.logprob,
      bytes: bytes(t.text),
      top_logprobs: t.top.map(x => ({ token: x.text, logprob: x.logprob, bytes: bytes(x.text) }))
    })),
    refusal: null
  }
}

/** The legacy completions shape: parallel arrays plus one { text: logprob } map per token. */
function textLogprobs (tokens: TokenLogprob[], offset: number): unknown {
  const textOffset: number[] = []
  for (const t of tokens) { textOffset.push(offset); offset += t.text.length }
  return {
    tokens: tokens.map(t => t.text),
    token_logprobs: tokens.map(t => t.logprob),
    top_logprobs: tokens.map(t => Object.fromEntries(t.top.map(x => [x.text, x.logprob]))),
    text_offset: textOffset
  }
}

const usage = (r: RunResult): unknown => ({ prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens })

async function respond (ctx: GatewayContext, job: Job, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const signal = disconnectSignal(request, reply)
  const id = newId(job.kind === 'chat' ? 'chatcmpl-' : 'cmpl-')
  const created = unixNow()
  const object = job.kind === 'chat' ? 'chat.completion' : 'text_completion'
  const base = { id, object: job.stream && job.kind === 'chat' ? 'chat.completion.chunk' : object, created, model: job.model, system_fingerprint: null }
  const run = { promptIds: job.promptIds, maxTokens: job.maxTokens, sampling: job.sampling, stop: job.stop, logprobs: job.logprobs, signal, trust: trustOf(request, ctx.defaultTrust), constraint: await job.grammar?.constraint() }

  if (!job.stream) {
    const t: ToolRun | undefined = job.tools != null ? await job.tools.run(run) : undefined
    const r = t?.result ?? await job.engine.run(run)
    const logprobs = job.logprobs == null ? null : job.kind === 'chat' ? chatLogprobs(r.tokens) : textLogprobs(r.tokens, 0)
    const calls = t != null && t.calls.length > 0 ? { tool_calls: t.calls.map(openaiCall) } : {}
    const choice = job.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: t != null ? t.content : r.text, refusal: null, ...calls }, logprobs, finish_reason: 'tool_calls' in calls ? 'tool_calls' : r.finishReason }
      : { index: 0, text: r.text, logprobs, finish_reason: r.finishReason }
    return { ...base, choices: [choice], usage: usage(r) }
  }

  const out = new LazyStream(reply, 'text/event-stream; charset=utf-8')
  const extra = job.includeUsage ? { usage: null } : {}
  let offset = 0
  const send = (choice: Record<string, unknown>): void => { out.write(sse({ ...base, choices: [{ index: 0, ...choice }], ...extra })) }
  if (job.kind === 'chat') send({ delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null })
  const onChunk = (c: Chunk): void => {
    if (c.text === '' && c.token == null) return
    const tokens = c.token != null ? [c.token] : []
    if (job.kind === 'chat') {
      send({ delta: { content: c.text }, logprobs: job.logprobs == null ? null : chatLogprobs(tokens), finish_reason: null })
    } else {
      send({ text: c.text, logprobs: job.logprobs == null ? null : textLogprobs(tokens, offset), finish_reason: null })
    }
    offset += c.text.length
  }
  // Each call as OpenAI streams it: a delta naming it, then its arguments.
  const onCalls = (calls: ParsedCall[], first: number): void => {
    calls.forEach((c, i) => { for (const d of openaiCallDeltas(c, first + i)) send({ delta: { tool_calls: [d] }, logprobs: null, finish_reason: null }) })
  }
  try {
    const t = job.tools != null ? await job.tools.run({ ...run, onChunk }, onCalls) : undefined
    const r = t?.result ?? await job.engine.run({ ...run, onChunk })
    if (job.kind === 'chat') send({ delta: {}, logprobs: null, finish_reason: t != null && t.calls.length > 0 ? 'tool_calls' : r.finishReason })
    else send({ text: '', logprobs: null, finish_reason: r.finishReason })
    if (job.includeUsage) out.write(sse({ ...base, choices: [], usage: usage(r) }))
    out.write('data: [DONE]\n\n')
  } catch (err) {
    if (!out.started && !signal.aborted) throw err
    if (!signal.aborted) out.write(sse(errorBody('openai', toApiError(err))))
  } finally {
    if (out.started) out.end()
  }
  return reply
}

export function registerOpenAI (app: FastifyInstance, ctx: GatewayContext): void {
  app.get('/v1/models', async () => ({
    object: 'list',
    data: (await ctx.catalog.list()).filter(m => m.complete).map(m => ({ id: m.name, object: 'model', created: ctx.created, owned_by: 'plexus' }))
  }))

  app.get('/v1/models/:model', async (request) => {
    const { name } = await resolveModel(ctx, (request.params as { model: string }).model, 'openai')
    return { id: name, object: 'model', created: ctx.created, owned_by: 'plexus' }
  })

  app.post('/v1/chat/completions', async (request, reply) => {
    const b = asBody(request.body)
    refuseUnsupported(b, FIELDS.openaiChat)
    const { name: model, engine } = await resolveModel(ctx, b.model, 'openai')
    singleChoice(b)
    const format = openaiResponseFormat(b)
    const tools = toolsFor(engine, openaiToolRequest(functionTools(b.tools), b.tool_choice, b.parallel_tool_calls))
    const ids = await encodeChat(engine, chatMessages(b), tools)
    const requested = optInt(b, 'max_completion_tokens') ?? optInt(b, 'max_tokens')
    const param = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens'
    const wantLogprobs = optBool(b, 'logprobs') ?? false
    const top = optInt(b, 'top_logprobs')
    if (top != null && !wantLogprobs) throw badRequest('top_logprobs needs logprobs: true', { param: 'top_logprobs' })
    if (top != null && (top < 0 || top > MAX_TOP_LOGPROBS)) throw badRequest(`top_logprobs must be in 0..${MAX_TOP_LOGPROBS}`, { param: 'top_logprobs' })
    return await respond(ctx, {
      kind: 'chat',
      model,
      engine,
      promptIds: ids,
      maxTokens: engine.maxTokens(ids.length, requested, ctx.defaultMaxTokens, param),
      sampling: sampling(engine, b),
      stop: stopList(b, 'stop'),
      logprobs: wantLogprobs ? (top ?? 0) : undefined,
      grammar: await compileFormat(engine, format),
      tools,
      ...streamFlags(b)
    }, request, reply)
  })

  app.post('/v1/completions', async (request, reply) => {
    const b = asBody(request.body)
    refuseUnsupported(b, FIELDS.openaiCompletions)
    const { name: model, engine } = await resolveModel(ctx, b.model, 'openai')
    singleChoice(b)
    if (optBool(b, 'echo') === true) throw badRequest('echo is not supported', { param: 'echo' })
    if (b.suffix != null) throw badRequest('suffix is not supported', { param: 'suffix' })
    const format = openaiResponseFormat(b)
    const ids = await promptIds(engine, b)
    const logprobs = optInt(b, 'logprobs')
    if (logprobs != null && (logprobs < 0 || logprobs > MAX_TOP_LOGPROBS)) throw badRequest(`logprobs must be in 0..${MAX_TOP_LOGPROBS}`, { param: 'logprobs' })
    return await respond(ctx, {
      kind: 'text',
      model,
      engine,
      promptIds: ids,
      // OpenAI's legacy default is 16 tokens.
      maxTokens: engine.maxTokens(ids.length, optInt(b, 'max_tokens'), 16),
      sampling: sampling(engine, b),
      stop: stopList(b, 'stop'),
      logprobs,
      grammar: await compileFormat(engine, format),
      ...streamFlags(b)
    }, request, reply)
  })
}
