// The tools and tool choice of a request, in each API's shape, validated: every fault is a 400
// naming the field.
import { badRequest } from '../errors.ts'
import { isObject } from './types.ts'
import type { ToolChoice, ToolRequest, ToolSpec } from './types.ts'

const NAME = /^[a-zA-Z0-9_-]{1,64}$/
const SCHEMA_TYPES = ['object', 'array', 'string', 'number', 'integer', 'boolean', 'null']

/** The checks a grammar needs of a JSON Schema: an object schema whose parts are schemas. */
function checkSchema (schema: unknown, param: string, top: boolean): void {
  if (typeof schema === 'boolean' && !top) return
  if (!isObject(schema)) throw badRequest(`${param} must be a JSON Schema object`, { param })
  const type = schema.type
  if (top && type !== 'object') throw badRequest(`${param}.type must be "object": a tool's arguments are a JSON object`, { param: `${param}.type` })
  for (const t of Array.isArray(type) ? type : type != null ? [type] : []) {
    if (typeof t !== 'string' || !SCHEMA_TYPES.includes(t)) throw badRequest(`${param}.type: ${JSON.stringify(t)} is not a JSON Schema type (${SCHEMA_TYPES.join(', ')})`, { param: `${param}.type` })
  }
  if (schema.properties != null) {
    if (!isObject(schema.properties)) throw badRequest(`${param}.properties must be an object of schemas`, { param: `${param}.properties` })
    for (const [k, v] of Object.entries(schema.properties)) checkSchema(v, `${param}.properties.${k}`, false)
  }
  if (schema.required != null && !(Array.isArray(schema.required) && schema.required.every(r => typeof r === 'string'))) {
    throw badRequest(`${param}.required must be an array of property names`, { param: `${param}.required` })
  }
  if (schema.items != null) checkSchema(schema.items, `${param}.items`, false)
  for (const key of ['anyOf', 'oneOf', 'allOf']) {
    const list = schema[key]
    if (list == null) continue
    if (!Array.isArray(list) || list.length === 0) throw badRequest(`${param}.${key} must be a non-empty array of schemas`, { param: `${param}.${key}` })
    list.forEach((v, i) => checkSchema(v, `${param}.${key}[${i}]`, false))
  }
  if (schema.enum != null && !(Array.isArray(schema.enum) && schema.enum.length > 0)) throw badRequest(`${param}.enum must be a non-empty array`, { param: `${param}.enum` })
}

function tool (name: unknown, description: unknown, parameters: unknown, param: string, schemaKey: string): ToolSpec {
  if (name == null || name === '') throw badRequest(`${param}.name: field required`, { param: `${param}.name` })
  if (typeof name !== 'string' || !NAME.test(name)) throw badRequest(`${param}.name must be 1 to 64 letters, digits, _ or - (got ${JSON.stringify(name)})`, { param: `${param}.name` })
  if (description != null && typeof description !== 'string') throw badRequest(`${param}.description must be a string`, { param: `${param}.description` })
  const schema = parameters ?? { type: 'object', properties: {} }
  checkSchema(schema, `${param}.${schemaKey}`, true)
  return { name, ...(description != null ? { description: description as string } : {}), parameters: schema as Record<string, unknown> }
}

function toolList (raw: unknown, key: string): unknown[] | undefined {
  if (raw == null) return undefined
  if (!Array.isArray(raw)) throw badRequest(`${key} must be an array of tools`, { param: key })
  return raw
}

function unique (tools: ToolSpec[], key: string): ToolSpec[] {
  const seen = new Set<string>()
  tools.forEach((t, i) => {
    if (seen.has(t.name)) throw badRequest(`${key}[${i}].name: "${t.name}" is given twice`, { param: `${key}[${i}].name` })
    seen.add(t.name)
  })
  return tools
}

/** OpenAI's (and Ollama's) `tools`: `[{ type: 'function', function: { name, description, parameters } }]`. */
export function functionTools (raw: unknown, key = 'tools'): ToolSpec[] | undefined {
  const list = toolList(raw, key)
  return list == null
    ? undefined
    : unique(list.map((t, i) => {
      const param = `${key}[${i}]`
      if (!isObject(t)) throw badRequest(`${param} must be an object`, { param })
      if (t.type !== 'function') throw badRequest(`${param}.type must be "function" (got ${JSON.stringify(t.type)}): only function tools are supported`, { param: `${param}.type` })
      if (!isObject(t.function)) throw badRequest(`${param}.function: field required`, { param: `${param}.function` })
      const f = t.function
      return tool(f.name, f.description, f.parameters, `${param}.function`, 'parameters')
    }), key)
}

/** Anthropic's `tools`: `[{ name, description, input_schema }]` (server tools, with a `type`, are refused). */
export function anthropicTools (raw: unknown): ToolSpec[] | undefined {
  const list = toolList(raw, 'tools')
  return list == null
    ? undefined
    : unique(list.map((t, i) => {
      const param = `tools.${i}`
      if (!isObject(t)) throw badRequest(`${param}: Input should be an object`)
      if (t.type != null && t.type !== 'custom') throw badRequest(`${param}.type: ${JSON.stringify(t.type)} tools are not supported: only custom tools (name, description, input_schema)`)
      if (t.input_schema == null) throw badRequest(`${param}.input_schema: Field required`)
      return tool(t.name, t.description, t.input_schema, param, 'input_schema')
    }), 'tools')
}

function named (tools: ToolSpec[], name: unknown, param: string): ToolChoice {
  if (typeof name !== 'string' || name === '') throw badRequest(`${param}: the name of a tool is required`, { param })
  if (!tools.some(t => t.name === name)) throw badRequest(`${param}: no tool is named "${name}" (tools: ${tools.map(t => t.name).join(', ')})`, { param })
  return { mode: 'function', name }
}

/** OpenAI's `tool_choice` and `parallel_tool_calls` (also taken on Ollama's /api/chat). */
export function openaiToolRequest (tools: ToolSpec[] | undefined, choice: unknown, parallel: unknown): ToolRequest | undefined {
  if (parallel != null && typeof parallel !== 'boolean') throw badRequest('parallel_tool_calls must be true or false', { param: 'parallel_tool_calls' })
  if (tools == null || tools.length === 0) {
    if (choice != null && choice !== 'none' && choice !== 'auto') throw badRequest('tool_choice needs tools', { param: 'tool_choice' })
    return undefined
  }
  let c: ToolChoice
  if (choice == null || choice === 'auto') c = { mode: 'auto' }
  else if (choice === 'none') c = { mode: 'none' }
  else if (choice === 'required') c = { mode: 'required' }
  else if (isObject(choice) && choice.type === 'function' && isObject(choice.function)) c = named(tools, choice.function.name, 'tool_choice.function.name')
  else throw badRequest('tool_choice must be "none", "auto", "required" or { "type": "function", "function": { "name": ... } }', { param: 'tool_choice' })
  return { tools, choice: c, parallel: parallel !== false }
}

/** Anthropic's `tool_choice`: `{ type: 'auto' | 'any' | 'tool' | 'none', name?, disable_parallel_tool_use? }`. */
export function anthropicToolRequest (tools: ToolSpec[] | undefined, choice: unknown): ToolRequest | undefined {
  if (choice != null && !isObject(choice)) throw badRequest('tool_choice: Input should be an object')
  const type = choice?.type ?? 'auto'
  if (tools == null || tools.length === 0) {
    if (type !== 'auto' && type !== 'none') throw badRequest('tool_choice: tools are required when tool_choice is set')
    return undefined
  }
  const dpu = choice?.disable_parallel_tool_use
  if (dpu != null && typeof dpu !== 'boolean') throw badRequest('tool_choice.disable_parallel_tool_use: Input should be a valid boolean')
  let c: ToolChoice
  if (type === 'auto') c = { mode: 'auto' }
  else if (type === 'none') c = { mode: 'none' }
  else if (type === 'any') c = { mode: 'required' }
  else if (type === 'tool') c = named(tools, choice?.name, 'tool_choice.name')
  else throw badRequest(`tool_choice.type: must be "auto", "any", "tool" or "none" (got ${JSON.stringify(type)})`)
  return { tools, choice: c, parallel: dpu !== true }
}
