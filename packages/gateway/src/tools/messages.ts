// Each API's chat messages, tool calls and tool results included, as the Hugging Face message
// shape chat templates read: assistant `tool_calls` with object arguments, `role: 'tool'` results.
import type { ChatMessage, ChatToolCall } from '@plexus/runtime'
import { badRequest } from '../errors.ts'
import { contentText } from '../validate.ts'
import type { Body } from '../validate.ts'
import { isObject } from './types.ts'

function messageArray (b: Body, key = 'messages'): Body[] {
  const v = b[key]
  if (v == null) throw badRequest(`missing required field ${key}`, { param: key })
  if (!Array.isArray(v) || v.length === 0) throw badRequest(`${key} must be a non-empty array of messages`, { param: key })
  return v.map((m, i) => {
    if (!isObject(m)) throw badRequest(`${key}[${i}] must be an object`, { param: `${key}[${i}]` })
    if (typeof m.role !== 'string') throw badRequest(`${key}[${i}].role must be a string`, { param: `${key}[${i}].role` })
    return m
  })
}

function callArguments (v: unknown, param: string): Record<string, unknown> {
  let args = v ?? {}
  if (typeof args === 'string') {
    try { args = JSON.parse(args === '' ? '{}' : args) } catch { throw badRequest(`${param} must be a JSON object in a string (it does not parse)`, { param }) }
  }
  if (!isObject(args)) throw badRequest(`${param} must be a JSON object`, { param })
  return args
}

/** Calls in OpenAI's shape (arguments a JSON string) or Ollama's (an object, no id). */
function toolCalls (v: unknown, param: string, newId: () => string): ChatToolCall[] {
  if (!Array.isArray(v)) throw badRequest(`${param} must be an array of tool calls`, { param })
  return v.map((c, j) => {
    const p = `${param}[${j}]`
    if (!isObject(c) || !isObject(c.function)) throw badRequest(`${p}.function: field required`, { param: `${p}.function` })
    if (typeof c.function.name !== 'string' || c.function.name === '') throw badRequest(`${p}.function.name must be a non-empty string`, { param: `${p}.function.name` })
    if (c.id != null && typeof c.id !== 'string') throw badRequest(`${p}.id must be a string`, { param: `${p}.id` })
    return { id: (c.id as string | undefined) ?? newId(), type: 'function', function: { name: c.function.name, arguments: callArguments(c.function.arguments, `${p}.function.arguments`) } }
  })
}

/** Links tool results to their calls: the call's name, and an id by order where the API has none. */
class CallLedger {
  readonly #names = new Map<string, string>()
  readonly #unanswered: string[] = []
  #n = 0
  readonly newId = (): string => `call_${this.#n++}`
  record (calls: ChatToolCall[]): void {
    this.#unanswered.length = 0
    for (const c of calls) { this.#names.set(c.id!, c.function.name); this.#unanswered.push(c.id!) }
  }

  answer (id: string | undefined): { tool_call_id: string, name?: string } {
    const callId = id ?? this.#unanswered[0] ?? this.newId()
    const at = this.#unanswered.indexOf(callId)
    if (at >= 0) this.#unanswered.splice(at, 1)
    const name = this.#names.get(callId)
    return { tool_call_id: callId, ...(name != null ? { name } : {}) }
  }
}

/** OpenAI's messages (also Ollama's: calls without ids, results with `tool_name` and no `tool_call_id`). */
export function chatMessages (b: Body, dialect: 'openai' | 'ollama' = 'openai'): ChatMessage[] {
  const ledger = new CallLedger()
  return messageArray(b).map((m, i): ChatMessage => {
    const param = `messages[${i}]`
    const role = m.role as string
    if (role === 'assistant' && m.tool_calls != null && !(Array.isArray(m.tool_calls) && m.tool_calls.length === 0)) {
      const calls = toolCalls(m.tool_calls, `${param}.tool_calls`, ledger.newId)
      ledger.record(calls)
      const text = contentText(m.content, `${param}.content`)
      return { role, content: text === '' ? null : text, tool_calls: calls }
    }
    if (role === 'tool') {
      if (dialect === 'openai' && typeof m.tool_call_id !== 'string') throw badRequest(`${param}.tool_call_id: field required on a tool message`, { param: `${param}.tool_call_id` })
      const link = ledger.answer(m.tool_call_id as string | undefined)
      const name = typeof m.tool_name === 'string' ? m.tool_name : typeof m.name === 'string' ? m.name : link.name
      return { role, content: contentText(m.content, `${param}.content`), tool_call_id: link.tool_call_id, ...(name != null ? { name } : {}) }
    }
    return { role, content: contentText(m.content, `${param}.content`) }
  })
}

/** A tool_result's content: a string or text blocks. */
function resultText (v: unknown, param: string): string {
  if (v == null) return ''
  if (typeof v === 'string') return v
  if (Array.isArray(v)) {
    return v.map((p, k) => {
      if (!isObject(p) || p.type !== 'text' || typeof p.text !== 'string') throw badRequest(`${param}.${k}: only text blocks are supported in a tool_result`)
      return p.text
    }).join('')
  }
  throw badRequest(`${param}: must be a string or a list of text blocks`)
}

/** Anthropic's messages: text, tool_use and tool_result blocks. */
export function anthropicMessages (b: Body): ChatMessage[] {
  const out: ChatMessage[] = []
  messageArray(b).forEach((m, i) => {
    const role = m.role as string
    if (role !== 'user' && role !== 'assistant') throw badRequest(`messages.${i}.role: must be "user" or "assistant" (got "${role}"); put instructions in "system"`)
    if (typeof m.content === 'string') { out.push({ role, content: m.content }); return }
    if (!Array.isArray(m.content)) throw badRequest(`messages.${i}.content: must be a string or a list of content blocks`)
    let text = ''
    const calls: ChatToolCall[] = []
    m.content.forEach((block, k) => {
      const p = `messages.${i}.content.${k}`
      if (!isObject(block)) throw badRequest(`${p}: must be a content block`)
      if (block.type === 'text' && typeof block.text === 'string') {
        text += block.text
      } else if (block.type === 'tool_use' && role === 'assistant') {
        if (typeof block.id !== 'string' || typeof block.name !== 'string') throw badRequest(`${p}: a tool_use block needs id and name`)
        if (!isObject(block.input)) throw badRequest(`${p}.input: must be an object`)
        calls.push({ id: block.id, type: 'function', function: { name: block.name, arguments: block.input } })
      } else if (block.type === 'tool_result' && role === 'user') {
        if (typeof block.tool_use_id !== 'string') throw badRequest(`${p}.tool_use_id: Field required`)
        const name = [...out].reverse().flatMap(o => o.tool_calls ?? []).find(c => c.id === block.tool_use_id)?.function.name
        const result = resultText(block.content, `${p}.content`)
        out.push({ role: 'tool', content: block.is_error === true ? `Error: ${result}` : result, tool_call_id: block.tool_use_id, ...(name != null ? { name } : {}) })
      } else {
        throw badRequest(`${p}: ${JSON.stringify(block.type)} blocks are not supported in ${role} messages (text${role === 'assistant' ? ', tool_use' : ', tool_result'})`)
      }
    })
    if (calls.length > 0) out.push({ role, content: text === '' ? null : text, tool_calls: calls })
    else if (text !== '' || !m.content.some(x => isObject(x) && x.type === 'tool_result')) out.push({ role, content: text })
  })
  return out
}
