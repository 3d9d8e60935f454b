// Ollama's API: POST /api/generate, POST /api/chat (NDJSON streams by default); model routes in ollama-models.ts.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { ChatMessage, SamplingOptions } from '@plexus/runtime'
import { badRequest, errorBody, toApiError } from './errors.ts'
import type { Engine, RunResult } from './engine.ts'
import { resolveModel, trustOf } from './context.ts'
import type { GatewayContext } from './context.ts'
import { asBody, optBool, optInt, optNumber, optObject, optString, stopList } from './validate.ts'
import type { Body } from './validate.ts'
import { LazyStream, disconnectSignal } from './stream.ts'
import { registerOllamaModels } from './ollama-models.ts'
import { FIELDS, refuseUnsupported } from './fields.ts'
import { ollamaFormat, compileFormat } from './response-format.ts'
import type { OutputFormat } from './response-format.ts'
import { toolsFor, encodeChat, chatMessages, functionTools, openaiToolRequest } from './tools/index.ts'
import type { ParsedCall, ToolCalls } from './tools/index.ts'
import { ollamaCall } from './tools/wire.ts'

interface Job { model: string, engine: Engine, promptIds: number[], maxTokens: number, sampling: SamplingOptions, stop: string[], stream: boolean, format?: OutputFormat, tools?: ToolCalls }

/** `options`: Ollama's defaults are temperature 0.8, top_k 40, top_p 0.9; num_predict -1 = unbounded. */
function job (ctx: GatewayContext, b: Body, model: string, engine: Engine, ids: number[]): Job {
  const o = optObject(b, 'options') ?? {}
  refuseUnsupported(o, FIELDS.ollamaOptions, 'options')
  const numPredict = optInt(o, 'num_predict', 'options')
  const s: SamplingOptions = {
    temperature: optNumber(o, 'temperature', 'options') ?? 0.8,
    topK: optInt(o, 'top_k', 'options') ?? 40,
    topP: optNumber(o, 'top_p', 'options') ?? 0.9,
    seed: optInt(o, 'seed', 'options')
  }
  engine.checkSampling(s)
  const bounded = numPredict != null && numPredict >= 0
  return {
    model,
    engine,
    promptIds: ids,
    maxTokens: engine.maxTokens(ids.length, bounded ? numPredict : undefined, bounded ? numPredict : ctx.defaultMaxTokens, 'options.num_predict'),
    sampling: s,
    stop: stopList(o, 'stop', 'options'),
    stream: optBool(b, 'stream') ?? true,
    format: ollamaFormat(b)
  }
}

const ns = (seconds: number): number => Math.round(seconds * 1e9)

function finalFields (r: RunResult, t0: number): Record<string, unknown> {
  return {
    done: true,
    done_reason: r.finishReason === 'stop' ? 'stop' : 'length',
    total_duration: ns((performance.now() - t0) / 1000),
    load_duration: 0,
    prompt_eval_count: r.promptTokens,
    prompt_eval_duration: ns(r.seconds.prefill),
    eval_count: r.completionTokens,
    eval_duration: ns(r.seconds.decode)
  }
}

async function respond (ctx: GatewayContext, j: Job, chat: boolean, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const t0 = performance.now()
  const signal = disconnectSignal(request, reply)
  const head = (): Record<string, unknown> => ({ model: j.model, created_at: new Date().toISOString() })
  const piece = (text: string): Record<string, unknown> => chat ? { message: { role: 'assistant', content: text } } : { response: text }
  // `format` compiled (a bad schema is a 400) before anything is streamed
  const grammar = await compileFormat(j.engine, j.format)
  const run = { promptIds: j.promptIds, maxTokens: j.maxTokens, sampling: j.sampling, stop: j.stop, signal, trust: trustOf(request, ctx.defaultTrust), constraint: await grammar?.constraint() }
  if (!j.stream) {
    if (j.tools != null) {
      const t = await j.tools.run(run)
      const calls = t.calls.length > 0 ? { tool_calls: t.calls.map(ollamaCall) } : {}
      return { ...head(), message: { role: 'assistant', content: t.content ?? '', ...calls }, ...finalFields(t.result, t0) }
    }
    const r = await j.engine.run(run)
    return { ...head(), ...piece(r.text), ...finalFields(r, t0) }
  }
  const out = new LazyStream(reply, 'application/x-ndjson')
  const line = (obj: unknown): void => { out.write(JSON.stringify(obj) + '\n') }
  try {
    const onChunk = (c: { text: string }): void => { if (c.text !== '') line({ ...head(), ...piece(c.text), done: false }) }
    // Calls go out as Ollama sends them: a message of their own once complete.
    const onCalls = (calls: ParsedCall[]): void => { line({ ...head(), message: { role: 'assistant', content: '', tool_calls: calls.map(ollamaCall) }, done: false }) }
    const r = j.tools != null ? (await j.tools.run({ ...run, onChunk }, onCalls)).result : await j.engine.run({ ...run, onChunk })
    line({ ...head(), ...piece(''), ...finalFields(r, t0) })
  } catch (err) {
    if (!out.started && !signal.aborted) throw err
    if (!signal.aborted) line(errorBody('ollama', toApiError(err)))
  } finally {
    if (out.started) out.end()
  }
  return reply
}

export function registerOllama (app: FastifyInstance, ctx: GatewayContext): void {
  registerOllamaModels(app, ctx)

  app.get('/api/version', async () => ({ version: '0.0.0-plexus' }))

  app.post('/api/generate', async (request, reply) => {
    const b = asBody(request.body)
    refuseUnsupported(b, FIELDS.ollamaGenerate)
    const { name: model, engine } = await resolveModel(ctx, b.model, 'ollama')
    const prompt = optString(b, 'prompt')
    if (prompt == null || prompt === '') throw badRequest('missing required field prompt')
    if (b.images != null) throw badRequest('images are not supported')
    const system = optString(b, 'system')
    // Like Ollama, the prompt goes through the chat template unless raw (or the model has none).
    const templated = optBool(b, 'raw') !== true && engine.model.tokenizerConfig?.chat_template != null
    const messages: ChatMessage[] = [...(system != null ? [{ role: 'system', content: system }] : []), { role: 'user', content: prompt }]
    const ids = templated ? await engine.encodeChat(messages) : await engine.encodeText(prompt)
    return await respond(ctx, job(ctx, b, model, engine, ids), false, request, reply)
  })

  app.post('/api/chat', async (request, reply) => {
    const b = asBody(request.body)
    refuseUnsupported(b, FIELDS.ollamaChat)
    const { name: model, engine } = await resolveModel(ctx, b.model, 'ollama')
    // Ollama's API has no tool_choice: OpenAI's is taken as an extension (to force a call).
    const tools = toolsFor(engine, openaiToolRequest(functionTools(b.tools), b.tool_choice, undefined))
    const ids = await encodeChat(engine, chatMessages(b, 'ollama'), tools)
    return await respond(ctx, { ...job(ctx, b, model, engine, ids), tools }, true, request, reply)
  })
}
