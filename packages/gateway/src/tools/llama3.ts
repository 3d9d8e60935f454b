// Llama 3.1 / 3.2 templates: the call is the whole message, one JSON object
// `{"name": ..., "parameters": {...}}`, possibly after <|python_tag|> (a special token, so
// usually absent from the decoded text).
import { callFrom, callSchema } from './types.ts'
import type { ToolFamily } from './types.ts'

export const llama3: ToolFamily = {
  name: 'llama3',
  syntax: {
    open: ['<|python_tag|>'],
    bareStart: '{',
    callsOf: (v) => { const c = callFrom(v, ['parameters', 'arguments']); return c != null ? [c] : undefined }
  },
  forcedCall: (tools) => ({ spec: { type: 'json_schema', schema: callSchema(tools, 'parameters') } })
}
