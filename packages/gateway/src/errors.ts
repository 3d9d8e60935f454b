// One error type for every API; each dialect renders it in its own wire shape.

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

/** Any thrown value as an ApiError: ours as is, fastify's 4xx by status, anything else a 500. */
export function toApiError (err: unknown): ApiError {
  if (err instanceof ApiError) return err
  const e = err as { statusCode?: number, message?: string, code?: string }
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    const message = e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || e.code === 'FST_ERR_CTP_INVALID_JSON_BODY'
      ? 'the request body is not valid JSON'
      : String(e.message ?? 'bad request')
    return new ApiError(e.statusCode, message)
  }
  // Verification asked for where it cannot run (no verifier for some blocks, a local model).
  if ((err as Error)?.name === 'TrustError') {
    const status = (err as { httpStatus?: number }).httpStatus ?? 503
    return new ApiError(status, String(e.message), { param: 'X-Plexus-Trust', code: status === 501 ? 'trust_mode_not_supported' : 'verification_unavailable' })
  }
  // The swarm could not run the request (no route, servers failing, a model's client parts not
  // fetchable): retryable, not a gateway bug.
  if (['NoRouteError', 'RemoteError', 'PeerFailure', 'SwarmUnreachableError', 'ModelFetchError'].includes((err as Error)?.name)) {
    return new ApiError(503, `the swarm could not serve this request: ${String(e.message)}`, { code: 'swarm_unavailable' })
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
