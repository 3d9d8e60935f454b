// Parsed calls in each API's wire shape.
import { newId } from '../context.ts'
import type { ParsedCall } from './types.ts'

/** OpenAI's `tool_calls`: arguments as a JSON string. */
export function openaiCall (c: ParsedCall): { id: string, type: 'function', function: { name: string, arguments: string } } {
  return { id: newId('call_'), type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) } }
}

/**
 * A call as OpenAI streams it: the first delta names it (arguments ''), the next carries the
 * arguments; concatenated, they are the non-streamed call.
 */
export function openaiCallDeltas (c: ParsedCall, index: number): unknown[] {
  const call = openaiCall(c)
  return [
    { index, id: call.id, type: 'function', function: { name: call.function.name, arguments: '' } },
    { index, function: { arguments: call.function.arguments } }
  ]
}

/** Anthropic's tool_use content block. */
export function anthropicToolUse (c: ParsedCall): { type: 'tool_use', id: string, name: string, input: Record<string, unknown> } {
  return { type: 'tool_use', id: newId('toolu_'), name: c.name, input: c.arguments }
}

/** Ollama's `tool_calls`: arguments as an object. */
export function ollamaCall (c: ParsedCall): { function: { name: string, arguments: Record<string, unknown> } } {
  return { function: { name: c.name, arguments: c.arguments } }
}
