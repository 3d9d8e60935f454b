// Structured output: OpenAI's `response_format` and Ollama's `format`, read and checked here and
// enforced by constrained decoding (a grammar masks every step's logits; see @plexus/runtime's grammar/).
import { compileGrammar, GrammarError } from '@plexus/runtime'
import type { CompiledGrammar, GrammarSpec } from '@plexus/runtime'
import { badRequest } from './errors.ts'
import type { Engine } from './engine.ts'
import type { Body } from './validate.ts'

/** What a request asked its output to be: a grammar, and the field that asked (for errors). */
export interface OutputFormat { spec: GrammarSpec, param: string }

const isObject = (v: unknown): v is Body => v != null && typeof v === 'object' && !Array.isArray(v)

/**
 * OpenAI's `response_format`: `{ type: 'text' }` (no constraint), `{ type: 'json_object' }`, or
 * `{ type: 'json_schema', json_schema: { name, schema, strict?, description? } }`.
 */
export function openaiResponseFormat (b: Body): OutputFormat | undefined {
  const param = 'response_format'
  const v = b.response_format
  if (v == null) return undefined
  if (!isObject(v)) throw badRequest('response_format must be an object such as { "type": "json_object" }', { param })
  switch (v.type) {
    case 'text': return undefined
    case 'json_object': return { spec: { type: 'json_object' }, param }
    case 'json_schema': {
      const js = v.json_schema
      if (!isObject(js)) throw badRequest('response_format.json_schema must be an object with name and schema', { param })
      if (typeof js.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) {
        throw badRequest('response_format.json_schema.name must be 1 to 64 letters, digits, underscores or dashes', { param })
      }
      if (js.description != null && typeof js.description !== 'string') throw badRequest('response_format.json_schema.description must be a string', { param })
      if (js.strict != null && typeof js.strict !== 'boolean') throw badRequest('response_format.json_schema.strict must be true or false', { param })
      if (js.schema == null) throw badRequest('response_format.json_schema.schema is required: the JSON Schema the output must match', { param })
      if (!isObject(js.schema)) throw badRequest('response_format.json_schema.schema must be a JSON Schema object', { param })
      // Output is always held to the schema; `strict` (a request to do so) changes nothing.
      return { spec: { type: 'json_schema', schema: js.schema }, param }
    }
    default:
      throw badRequest(`response_format.type must be "text", "json_object" or "json_schema" (got ${JSON.stringify(v.type ?? null)})`, { param })
  }
}

/** Ollama's `format`: "json" (any JSON object) or a JSON Schema object; "" is no format. */
export function ollamaFormat (b: Body): OutputFormat | undefined {
  const param = 'format'
  const v = b.format
  if (v == null || v === '') return undefined
  if (v === 'json') return { spec: { type: 'json_object' }, param }
  if (isObject(v)) return { spec: { type: 'json_schema', schema: v }, param }
  throw badRequest(`format must be "json" or a JSON Schema object (got ${JSON.stringify(v)})`, { param })
}

/**
 * The format compiled for the engine's model (cached per model and spec in the runtime), or
 * undefined for none. A schema or grammar the compiler refuses is a 400 naming the field.
 */
export async function compileFormat (engine: Engine, format: OutputFormat | undefined): Promise<CompiledGrammar | undefined> {
  if (format == null) return undefined
  try {
    return await compileGrammar(engine.tokenizer, engine.model.config.vocabSize, format.spec)
  } catch (err) {
    if (!(err instanceof GrammarError)) throw err
    throw badRequest(`${format.param}: ${err.message}`, { param: format.param, code: err.code })
  }
}
