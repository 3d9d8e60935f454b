// Which JSON Schema keywords a grammar can hold output to. xgrammar 0.1.27 compiles some keywords
// it does not enforce (allOf, not, if/then, multipleOf: the output may then not validate) and
// gets the edges of non-integer number ranges wrong (maximum 3 lets 3.5 through): such schemas are
// refused, naming the keyword and where it is, so "it compiled" keeps meaning "it will validate".

const ANNOTATIONS = ['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']
const ENFORCED = [
  'type', 'enum', 'const', 'anyOf', 'oneOf', '$ref', '$defs', 'definitions',
  'properties', 'required', 'additionalProperties', 'patternProperties', 'minProperties', 'maxProperties',
  'items', 'prefixItems', 'minItems', 'maxItems',
  'minLength', 'maxLength', 'pattern', 'format',
  'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'
]
const KNOWN = new Set([...ANNOTATIONS, ...ENFORCED])
const BOUNDS = ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']

type Schema = Record<string, unknown>
const isSchema = (v: unknown): v is Schema => v != null && typeof v === 'object' && !Array.isArray(v)

/** The first keyword `schema` uses that output could not be held to, as a sentence; undefined when none. */
export function unsupportedSchemaKeyword (schema: unknown, at = '#'): string | undefined {
  if (!isSchema(schema)) return undefined
  for (const [key, value] of Object.entries(schema)) {
    if (KNOWN.has(key)) continue
    // false is what the grammar does anyway (nothing beyond what the schema names)
    if ((key === 'unevaluatedProperties' || key === 'unevaluatedItems' || key === 'uniqueItems') && value === false) continue
    return `"${key}" at ${at} is not supported: the output could not be held to it`
  }
  const bounded = BOUNDS.filter(k => schema[k] != null)
  if (bounded.length > 0 && schema.type !== 'integer') {
    return `"${bounded[0]}" at ${at} is supported on integers only ("type": "integer"): bounds on other numbers are not held exactly`
  }
  const children: Array<[string, unknown]> = []
  for (const key of ['properties', 'patternProperties', '$defs', 'definitions']) {
    if (isSchema(schema[key])) for (const [name, sub] of Object.entries(schema[key])) children.push([`${at}/${key}/${name}`, sub])
  }
  for (const key of ['anyOf', 'oneOf', 'prefixItems']) {
    if (Array.isArray(schema[key])) (schema[key] as unknown[]).forEach((sub, i) => children.push([`${at}/${key}/${i}`, sub]))
  }
  for (const key of ['items', 'additionalProperties']) children.push([`${at}/${key}`, schema[key]])
  for (const [where, sub] of children) {
    const problem = unsupportedSchemaKeyword(sub, where)
    if (problem != null) return problem
  }
  return undefined
}
