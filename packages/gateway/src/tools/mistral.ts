// Mistral v3 templates: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`. [TOOL_CALLS] is a
// special token the decoder drops, so the array also counts as calls at the start of the output.
import { createHash } from 'node:crypto'
import { callFrom, callSchema } from './types.ts'
import type { ParsedCall, ToolFamily } from './types.ts'

const ALPHANUMERIC = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

export const mistral: ToolFamily = {
  name: 'mistral',
  syntax: {
    open: ['[TOOL_CALLS]'],
    bareStart: '[',
    callsOf: (v) => {
      const list = Array.isArray(v) ? v : [v]
      const calls = list.map(x => callFrom(x, ['arguments', 'parameters']))
      return calls.length > 0 && calls.every(c => c != null) ? calls as ParsedCall[] : undefined
    }
  },
  forcedCall: (tools) => ({ spec: { type: 'json_schema', schema: { type: 'array', items: callSchema(tools, 'arguments'), minItems: 1, maxItems: 1 } } }),
  // The template refuses any id but 9 alphanumerics; other APIs' ids map to one, the same every time.
  callId: (id) => {
    if (/^[a-zA-Z0-9]{9}$/.test(id)) return id
    const digest = createHash('sha256').update(id).digest()
    return Array.from(digest.subarray(0, 9), b => ALPHANUMERIC[b % ALPHANUMERIC.length]).join('')
  }
}
