// One error type for every API; each dialect renders it in its own wire shape.
import { PlexusError } from '@plexus/runtime'

export type Dialect = 'openai' | 'anthropic' | 'ollama'

export interface ApiErrorInit {
  /** OpenAI's `param`: the request field at fault. */
  param?: string
  /** OpenAI's `code`, e.g. `context_length_exceeded`. */
  code?: string
}

export class ApiError extends Error {
  readonly status: number
  readonly param: string | null
  readonly code: string | null

  constructor (status: number, message: string, init: ApiErrorInit = {}) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.param = init.param ?? null
    this.code = init.code ?? null
  }
}

export const badRequest = (message: string, init?: ApiErrorInit): ApiError => new ApiError(400, message, init)

const OPENAI_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'invalid_request_error',
  403: 'invalid_request_error',
  404: 'invalid_request_error',
  408: 'invalid_request_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
  501: 'not_implemented',
  503: 'server_error'
}

const ANTHROPIC_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
  501: 'invalid_request_error',
  503: 'overloaded_error'
}

/** Codes of ours that the APIs name their own way, with the request field at fault. */
const API_CODES: Record<string, ApiErrorInit> = {
  'trust-level': { param: 'X-Plexus-Trust', code: 'invalid_trust_level' },
  // verification asked for where it cannot run: a local model, or no verifier for some blocks
  'trust-unsupported': { param: 'X-Plexus-Trust', code: 'trust_mode_not_supported' },
  'trust-unavailable': { param: 'X-Plexus-Trust', code: 'verification_unavailable' },
  // the prompt tokenizer's queue is full (503, retry), or one prompt ran past its time budget (400)
  'tokenizer-busy': { code: 'tokenizer_busy' },
  'tokenizer-timeout': { code: 'tokenizer_timeout' }
}

/** A PlexusError by its code and status: 503 is the swarm's condition (retryable), other 5xx our fault. */
function fromPlexusError (err: PlexusError): ApiError {
  const named = API_CODES[err.code]
  if (named != null) return new ApiError(err.httpStatus, err.message, named)
  if (err.httpStatus === 503) return new ApiError(503, `the swarm could not serve this request: ${err.message}`, { code: 'swarm_unavailable' })
  if (err.httpStatus >= 500) return new ApiError(err.httpStatus, `internal error: ${err.message}`)
  return new ApiError(err.httpStatus, err.message, { code: err.code })
}

/** Any thrown value as an ApiError: ours as is, a PlexusError by its code, fastify's 4xx by status, anything else a 500. */
export function toApiError (err: unknown): ApiError {
  if (err instanceof ApiError) return err
  if (err instanceof PlexusError) return fromPlexusError(err)
  const e = err as { statusCode?: number, message?: string, code?: string }
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    const message = e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || e.code === 'FST_ERR_CTP_INVALID_JSON_BODY'
      ? 'the request body is not valid JSON'
      : String(e.message ?? 'bad request')
    return new ApiError(e.statusCode, message)
  }
  return new ApiError(500, `internal error: ${String(e?.message ?? err)}`)
}

/** The body of an error response in `dialect`'s shape. */
export function errorBody (dialect: Dialect, err: ApiError): unknown {
  switch (dialect) {
    case 'anthropic':
      return { type: 'error', error: { type: ANTHROPIC_TYPES[err.status] ?? 'api_error', message: err.message } }
    case 'ollama':
      return { error: err.message }
    default:
      return { error: { message: err.message, type: OPENAI_TYPES[err.status] ?? 'server_error', param: err.param, code: err.code } }
  }
}

/** Which API a URL belongs to (decides the error shape, even for unrouted paths). */
export function dialectOf (url: string): Dialect {
  if (url.startsWith('/v1/messages')) return 'anthropic'
  if (url.startsWith('/api/')) return 'ollama'
  return 'openai'
}
