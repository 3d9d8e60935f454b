// Qwen2.5 and Hermes-style templates: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
// one block per call, several allowed, text around them.
import { callFrom, callSchema } from './types.ts'
import type { ToolFamily } from './types.ts'

export const hermes: ToolFamily = {
  name: 'hermes',
  syntax: {
    open: ['<tool_call>'],
    close: '</tool_call>',
    callsOf: (v) => { const c = callFrom(v, ['arguments', 'parameters']); return c != null ? [c] : undefined }
  },
  // The opening tag goes into the prompt: a structural tag's JSON would allow any whitespace,
  // which a sampled model wanders into. The reply ends after the JSON (no closing tag needed).
  forcedCall: (tools) => ({ prefix: '<tool_call>\n', spec: { type: 'json_schema', schema: callSchema(tools, 'arguments') } }),
  // Each call exactly as the template renders past ones: the name fixed by the tag, the arguments by the schema.
  lazyCalls: (tools, parallel) => ({
    type: 'structural_tag',
    format: {
      type: 'triggered_tags',
      triggers: ['<tool_call>'],
      tags: tools.map(t => ({ type: 'tag', begin: `<tool_call>\n{"name": ${JSON.stringify(t.name)}, "arguments": `, content: { type: 'json_schema', json_schema: t.parameters }, end: '}\n</tool_call>' })),
      stop_after_first: !parallel
    }
  })
}
