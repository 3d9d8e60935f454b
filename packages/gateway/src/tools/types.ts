// What the tool-call code shares: tools as requests give them, calls as models make them.

/** A function tool, whatever API it came from. */
export interface ToolSpec {
  name: string
  description?: string
  /** JSON Schema of the arguments object. */
  parameters: Record<string, unknown>
}

/** A call parsed from generated text. */
export interface ParsedCall {
  name: string
  arguments: Record<string, unknown>
}

/** none: no calls; auto: the model decides; required: at least one call; function: a call of `name`. */
export type ToolChoice = { mode: 'none' } | { mode: 'auto' } | { mode: 'required' } | { mode: 'function', name: string }

/** A request's tools, validated. */
export interface ToolRequest {
  tools: ToolSpec[]
  choice: ToolChoice
  /** Whether the model may make several calls in one turn. */
  parallel: boolean
}

/** What a piece of generated text turned into: text for the client, and calls completed by it. */
export interface ParseStep {
  content: string
  calls: ParsedCall[]
}

/** How one model family writes calls. */
export interface CallSyntax {
  /** Markers that open a call region in the text. */
  open: string[]
  /** The marker closing a region; without one a region is one JSON value. */
  close?: string
  /**
   * A call may also start bare with this character at the start of the output: the family's
   * opener is a special token, which the decoder drops from the text.
   */
  bareStart?: '{' | '['
  /** The calls in one region's JSON value; undefined when it is not a call. */
  callsOf: (value: unknown) => ParsedCall[] | undefined
}

/** A model family's tool-call format: parsing and the grammar of a forced call. */
export interface ToolFamily {
  name: 'hermes' | 'llama3' | 'mistral'
  syntax: CallSyntax
  /**
   * A forced call of one of `tools`: text put at the start of the reply (in the prompt, so the
   * grammar is plain compact JSON) and the grammar spec (for compileGrammar) of what follows.
   */
  forcedCall: (tools: ToolSpec[]) => { prefix?: string, spec: Record<string, unknown> }
  /**
   * tool_choice auto: free text, but once the model opens a call, a grammar holds it to a valid
   * call of one of `tools` (where the opener is text a grammar can see, not a special token).
   */
  lazyCalls?: (tools: ToolSpec[], parallel: boolean) => Record<string, unknown>
  /** Rewrites call ids the family's template insists on a format for. */
  callId?: (id: string) => string
}

export const isObject = (v: unknown): v is Record<string, unknown> => v != null && typeof v === 'object' && !Array.isArray(v)

/** JSON Schema of one call object: `{"name": <one of the tools>, <argsKey>: <its parameters>}`. */
export function callSchema (tools: ToolSpec[], argsKey: string): Record<string, unknown> {
  const one = (t: ToolSpec): Record<string, unknown> => ({
    type: 'object',
    properties: { name: { const: t.name }, [argsKey]: t.parameters },
    required: ['name', argsKey],
    additionalProperties: false
  })
  return tools.length === 1 ? one(tools[0]) : { anyOf: tools.map(one) }
}

/** `{name, <argsKey>}` as a call, arguments given as an object or a JSON string of one. */
export function callFrom (v: unknown, argsKeys: string[]): ParsedCall | undefined {
  if (!isObject(v) || typeof v.name !== 'string' || v.name === '') return undefined
  const key = argsKeys.find(k => k in v)
  let args = key != null ? v[key] : {}
  if (typeof args === 'string') {
    try { args = JSON.parse(args) } catch { return undefined }
  }
  return isObject(args) ? { name: v.name, arguments: args } : undefined
}
