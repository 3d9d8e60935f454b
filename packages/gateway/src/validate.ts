// Typed reads of untrusted JSON request bodies; every failure is a 400 naming the field.
import { badRequest } from './errors.ts'

export type Body = Record<string, unknown>

export function asBody (body: unknown): Body {
  if (body == null) throw badRequest('the request body is empty: send a JSON object')
  if (typeof body !== 'object' || Array.isArray(body)) throw badRequest('the request body must be a JSON object')
  return body as Body
}

function where (prefix: string, key: string): string { return prefix === '' ? key : `${prefix}.${key}` }

export function optNumber (b: Body, key: string, prefix = ''): number | undefined {
  const v = b[key]
  if (v == null) return undefined
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badRequest(`${where(prefix, key)} must be a number`, { param: where(prefix, key) })
  return v
}

export function optInt (b: Body, key: string, prefix = ''): number | undefined {
  const v = optNumber(b, key, prefix)
  if (v != null && !Number.isInteger(v)) throw badRequest(`${where(prefix, key)} must be an integer`, { param: where(prefix, key) })
  return v
}

export function optBool (b: Body, key: string, prefix = ''): boolean | undefined {
  const v = b[key]
  if (v == null) return undefined
  if (typeof v !== 'boolean') throw badRequest(`${where(prefix, key)} must be true or false`, { param: where(prefix, key) })
  return v
}

export function optString (b: Body, key: string, prefix = ''): string | undefined {
  const v = b[key]
  if (v == null) return undefined
  if (typeof v !== 'string') throw badRequest(`${where(prefix, key)} must be a string`, { param: where(prefix, key) })
  return v
}

export function reqString (b: Body, key: string, prefix = ''): string {
  const v = optString(b, key, prefix)
  if (v == null) throw badRequest(`missing required field ${where(prefix, key)}`, { param: where(prefix, key) })
  return v
}

export function optObject (b: Body, key: string, prefix = ''): Body | undefined {
  const v = b[key]
  if (v == null) return undefined
  if (typeof v !== 'object' || Array.isArray(v)) throw badRequest(`${where(prefix, key)} must be an object`, { param: where(prefix, key) })
  return v as Body
}

/** A stop string or list of them (`stop`, `stop_sequences`). */
export function stopList (b: Body, key: string, prefix = '', max = 16): string[] {
  const v = b[key]
  if (v == null) return []
  const list = typeof v === 'string' ? [v] : v
  if (!Array.isArray(list) || !list.every(s => typeof s === 'string')) {
    throw badRequest(`${where(prefix, key)} must be a string or an array of strings`, { param: where(prefix, key) })
  }
  if (list.length > max) throw badRequest(`${where(prefix, key)} holds at most ${max} strings`, { param: where(prefix, key) })
  return list.filter(s => s !== '')
}

/** A message's content: a string, or a list of text parts (`[{ type: 'text', text }]`). */
export function contentText (v: unknown, param: string): string {
  if (typeof v === 'string') return v
  if (v == null) return ''
  if (Array.isArray(v)) {
    return v.map((part, i) => {
      const p = part as Body | null
      if (p == null || typeof p !== 'object' || p.type !== 'text' || typeof p.text !== 'string') {
        throw badRequest(`${param}[${i}]: only text content parts are supported`, { param })
      }
      return p.text
    }).join('')
  }
  throw badRequest(`${param} must be a string or an array of text parts`, { param })
}
