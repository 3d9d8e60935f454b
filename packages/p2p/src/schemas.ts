import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Ajv2020, MissingRefError } from 'ajv/dist/2020.js'
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js'

/**
 * The repo-root `schemas/` folder: `<name>.schema.json`, JSON Schema draft 2020-12. A packed
 * install has no repository root: `npm run pack` puts a copy beside the compiled code.
 */
const PACKED_SCHEMAS = new URL('./schemas/', import.meta.url)
export const SCHEMA_DIR = fileURLToPath(existsSync(PACKED_SCHEMAS) ? PACKED_SCHEMAS : new URL('../../../schemas/', import.meta.url))

// One strict Ajv for the process; each schema is read and compiled on first use only, so a
// broken schema file of some other component cannot break the ones this code needs.
const ajv = new Ajv2020({ strict: true, allErrors: false })
const compiled = new Map<string, ValidateFunction>()

/** Schema ids are file names without `.schema.json`: 'announcement' → schemas/announcement.schema.json. */
function schemaName (idOrRef: string): string {
  const base = idOrRef.replace(/#.*$/, '').replace(/^.*\//, '')
  return base.replace(/\.schema\.json$/, '').replace(/\.json$/, '')
}

function loadSchemaFile (name: string): object {
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) throw new Error(`bad schema id "${name}"`)
  const file = `${SCHEMA_DIR}${name}.schema.json`
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new Error(`schema "${name}" not found (${file}): ${(err as Error).message}`)
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new Error(`schema file ${file} is not valid JSON: ${(err as Error).message}`)
  }
}

function addSchemaFile (name: string, key: string): void {
  if (ajv.schemas[key] != null || ajv.refs[key] != null) return
  const schema = loadSchemaFile(name)
  try {
    ajv.addSchema(schema, key)
  } catch (err) {
    throw new Error(`schema "${name}" is invalid: ${(err as Error).message}`)
  }
}

/** The compiled validator for a schema id, compiling it (and any schema it $refs) once. */
export function getValidator (schemaId: string): ValidateFunction {
  const name = schemaName(schemaId)
  const known = compiled.get(name)
  if (known != null) return known
  addSchemaFile(name, name)
  // $refs to other schema files are resolved by name, loaded on demand
  for (let attempt = 0; ; attempt++) {
    try {
      const fn = ajv.getSchema(name)
      if (fn == null) throw new Error(`schema "${name}" did not compile`)
      compiled.set(name, fn)
      return fn
    } catch (err) {
      if (!(err instanceof MissingRefError) || attempt >= 32) throw new Error(`schema "${name}" cannot be compiled: ${(err as Error).message}`)
      addSchemaFile(schemaName(err.missingSchema), err.missingSchema)
    }
  }
}

/** Throws `value does not match schema "x" at /path: reason` unless `value` is valid. */
export function validate (schemaId: string, value: unknown): void {
  const problem = schemaProblem(schemaId, value)
  if (problem != null) throw new Error(`value ${problem}`)
}

/** `does not match schema "x" at /path: reason`, or undefined when `value` is valid. */
export function schemaProblem (schemaId: string, value: unknown): string | undefined {
  const fn = getValidator(schemaId)
  if (fn(value) === true) return undefined
  return `does not match schema "${schemaName(schemaId)}" ${describeError(fn.errors?.[0])}`
}

function describeError (e: ErrorObject | undefined): string {
  if (e == null) return '(no detail)'
  const at = e.instancePath === '' ? '(root)' : e.instancePath
  const params = e.params as Record<string, unknown>
  let detail = ''
  if (typeof params.additionalProperty === 'string') detail = ` "${params.additionalProperty}"`
  else if (typeof params.unevaluatedProperty === 'string') detail = ` "${params.unevaluatedProperty}"`
  else if (e.keyword === 'const') detail = ` ${JSON.stringify(params.allowedValue)}`
  return `at ${at}: ${e.message ?? e.keyword}${detail}`
}
