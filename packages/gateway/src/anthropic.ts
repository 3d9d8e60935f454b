// Anthropic's Messages API: POST /v1/messages, streamed as named SSE events or not.
import type { FastifyInstance } from 'fastify'
import type { ChatMessage, SamplingOptions } from '@plexus/runtime'
import { badRequest, errorBody, toApiError } from './errors.ts'
import type { RunResult } from './engine.ts'
import { resolveModel, newId, trustOf } from './context.ts'
import type { GatewayContext } from './context.ts'
import { asBody, contentText, messageList, optBool, optInt, optNumber, stopList } from './validate.ts'
import { LazyStream, sse, disconnectSignal } from './stream.ts'
import { FIELDS, refuseUnsupported } from './fields.ts'

function stopReason (r: RunResult): string {
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
    const messages: ChatMessage[] = messageList(b)
    for (const m of messages) {
      if (m.role !== 'user' && m.role !== 'assistant') throw badRequest(`messages: role must be "user" or "assistant" (got "${m.role}"); put instructions in "system"`)
    }
    if (b.system != null) messages.unshift({ role: 'system', content: contentText(b.system, 'system') })
    const ids = engine.encodeChat(messages)
    const maxTokens = engine.maxTokens(ids.length, requested, requested)
    const s: SamplingOptions = { temperature: optNumber(b, 'temperature') ?? 1, topP: optNumber(b, 'top_p'), topK: optInt(b, 'top_k') }
    if (s.temperature! > 1) throw badRequest(`temperature: must be between 0 and 1 (got ${s.temperature})`)
    engine.checkSampling(s)
    const stop = stopList(b, 'stop_sequences', '', 64)
    const stream = optBool(b, 'stream') ?? false
    const signal = disconnectSignal(request, reply)
    const id = newId('msg_')
    const message = (content: unknown[], r?: RunResult): Record<string, unknown> => ({
      id,
      type: 'message',
      role: 'assistant',
      model,
      content,
      stop_reason: r == null ? null : stopReason(r),
      stop_sequence: r?.stopSequence ?? null,
      usage: { input_tokens: ids.length, output_tokens: r?.completionTokens ?? 0 }
    })
    const run = { promptIds: ids, maxTokens, sampling: s, stop, signal, trust: trustOf(request, ctx.defaultTrust) }

    if (!stream) {
      const r = await engine.run(run)
      return message([{ type: 'text', text: r.text }], r)
    }

    const out = new LazyStream(reply, 'text/event-stream; charset=utf-8')
    out.write(sse({ type: 'message_start', message: message([]) }, 'message_start'))
    out.write(sse({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }, 'content_block_start'))
    out.write(sse({ type: 'ping' }, 'ping'))
    try {
      const r = await engine.run({
        ...run,
        onChunk: (c) => {
          if (c.text !== '') out.write(sse({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: c.text } }, 'content_block_delta'))
        }
      })
      out.write(sse({ type: 'content_block_stop', index: 0 }, 'content_block_stop'))
      out.write(sse({ type: 'message_delta', delta: { stop_reason: stopReason(r), stop_sequence: r.stopSequence ?? null }, usage: { output_tokens: r.completionTokens } }, 'message_delta'))
      out.write(sse({ type: 'message_stop' }, 'message_stop'))
    } catch (err) {
      if (!signal.aborted) out.write(sse(errorBody('anthropic', toApiError(err)), 'error'))
    } finally {
      out.end()
    }
    return reply
  })
}
