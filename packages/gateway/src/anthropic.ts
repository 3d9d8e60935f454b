// Anthropic's Messages API: POST /v1/messages, streamed as named SSE events or not.
import type { FastifyInstance } from 'fastify'
import type { ChatMessage, SamplingOptions } from '@plexus/runtime'
import { badRequest, errorBody, toApiError } from './errors.ts'
import type { RunResult } from './engine.ts'
import { resolveModel, newId, trustOf } from './context.ts'
import type { GatewayContext } from './context.ts'
import { asBody, contentText, optBool, optInt, optNumber, stopList } from './validate.ts'
import { LazyStream, sse, disconnectSignal } from './stream.ts'
import { FIELDS, refuseUnsupported } from './fields.ts'
import { toolsFor, encodeChat, anthropicMessages, anthropicTools, anthropicToolRequest } from './tools/index.ts'
import type { ToolRun } from './tools/index.ts'
import { anthropicToolUse } from './tools/wire.ts'
import { AnthropicBlocks } from './tools/anthropic-blocks.ts'

function stopReason (r: RunResult, t?: ToolRun): string {
  if (t != null && t.calls.length > 0) return 'tool_use'
  if (r.stopSequence != null) return 'stop_sequence'
  return r.finishReason === 'stop' ? 'end_turn' : 'max_tokens'
}

export function registerAnthropic (app: FastifyInstance, ctx: GatewayContext): void {
  app.post('/v1/messages', async (request, reply) => {
    const b = asBody(request.body)
    refuseUnsupported(b, FIELDS.anthropicMessages)
    const { name: model, engine } = await resolveModel(ctx, b.model, 'anthropic')
    const requested = optInt(b, 'max_tokens')
    if (requested == null) throw badRequest('max_tokens: field required', { param: 'max_tokens' })
    const messages: ChatMessage[] = anthropicMessages(b)
    if (b.system != null) messages.unshift({ role: 'system', content: contentText(b.system, 'system') })
    const tools = toolsFor(engine, anthropicToolRequest(anthropicTools(b.tools), b.tool_choice))
    const ids = await encodeChat(engine, messages, tools)
    const maxTokens = engine.maxTokens(ids.length, requested, requested)
    const s: SamplingOptions = { temperature: optNumber(b, 'temperature') ?? 1, topP: optNumber(b, 'top_p'), topK: optInt(b, 'top_k') }
    if (s.temperature! > 1) throw badRequest(`temperature: must be between 0 and 1 (got ${s.temperature})`)
    engine.checkSampling(s)
    const stop = stopList(b, 'stop_sequences', '', 64)
    const stream = optBool(b, 'stream') ?? false
    const signal = disconnectSignal(request, reply)
    const id = newId('msg_')
    const message = (content: unknown[], r?: RunResult, t?: ToolRun): Record<string, unknown> => ({
      id,
      type: 'message',
      role: 'assistant',
      model,
      content,
      stop_reason: r == null ? null : stopReason(r, t),
      stop_sequence: r?.stopSequence ?? null,
      usage: { input_tokens: ids.length, output_tokens: r?.completionTokens ?? 0 }
    })
    const run = { promptIds: ids, maxTokens, sampling: s, stop, signal, trust: trustOf(request, ctx.defaultTrust) }

    if (!stream) {
      if (tools == null) {
        const r = await engine.run(run)
        return message([{ type: 'text', text: r.text }], r)
      }
      const t = await tools.run(run)
      const content = [...(t.content != null && t.content !== '' ? [{ type: 'text', text: t.content }] : []), ...t.calls.map(anthropicToolUse)]
      return message(content.length > 0 ? content : [{ type: 'text', text: '' }], t.result, t)
    }

    const out = new LazyStream(reply, 'text/event-stream; charset=utf-8')
    const blocks = new AnthropicBlocks((event, data) => { out.write(sse(data, event)) })
    out.write(sse({ type: 'message_start', message: message([]) }, 'message_start'))
    // Without tools the one text block opens at once, as before; with tools blocks open as output comes.
    if (tools == null) blocks.openText()
    out.write(sse({ type: 'ping' }, 'ping'))
    try {
      const onChunk = (c: { text: string }): void => { blocks.text(c.text) }
      const t = tools != null ? await tools.run({ ...run, onChunk }, (calls) => { blocks.calls(calls) }) : undefined
      const r = t?.result ?? await engine.run({ ...run, onChunk })
      blocks.end()
      out.write(sse({ type: 'message_delta', delta: { stop_reason: stopReason(r, t), stop_sequence: r.stopSequence ?? null }, usage: { output_tokens: r.completionTokens } }, 'message_delta'))
      out.write(sse({ type: 'message_stop' }, 'message_stop'))
    } catch (err) {
      if (!signal.aborted) out.write(sse(errorBody('anthropic', toApiError(err)), 'error'))
    } finally {
      out.end()
    }
    return reply
  })
}
