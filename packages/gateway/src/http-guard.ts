// What every HTTP request to a gateway must pass before any route runs: who it is addressed to
// (Host), which web page sent it (Origin), what its body is (JSON only), and how long and how
// many connections it may hold. A web page can reach a loopback server through the visitor's
// browser; these checks are what keep such a page from driving the model (DNS rebinding, CSRF).
import type { FastifyInstance, FastifyRequest, FastifyReply } from 'fastify'
import { ApiError } from './errors.ts'

export interface HttpLimits {
  /**
   * Host names requests may be addressed to, besides loopback names. Default: any name when
   * the gateway listens on a non-loopback address (--host), else loopback names only.
   */
  allowedHosts?: string[]
  /** Web origins (scheme://host[:port]) allowed to call the API from a browser, or '*'. Pages on this machine (loopback origins) always are. */
  corsOrigins?: string[]
  /** The whole request (headers and body) must arrive within this (default 30 s). */
  requestTimeoutMs?: number
  /** TCP connections open at once; more are closed on accept (default 256). */
  maxConnections?: number
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000
export const DEFAULT_MAX_CONNECTIONS = 256
/** Headers must arrive sooner than a body may (slow-header clients hold a socket for nothing). */
export const HEADERS_TIMEOUT_MS = 10_000
/** An idle keep-alive connection between requests is closed after this. */
export const KEEP_ALIVE_TIMEOUT_MS = 30_000

/** Fastify/node http options enforcing the request timeouts (pass to Fastify()). */
export function serverOptions (limits: HttpLimits): { requestTimeout: number, keepAliveTimeout: number, http: { headersTimeout: number, connectionsCheckingInterval: number } } {
  const requestTimeout = limits.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
  return {
    requestTimeout,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    // node checks for expired requests on this interval (default 30 s): a late check lets
    // half-sent bodies pile up well past the timeout
    http: { headersTimeout: Math.min(HEADERS_TIMEOUT_MS, requestTimeout), connectionsCheckingInterval: Math.min(1000, requestTimeout) }
  }
}

export const isLoopbackName = (h: string): boolean =>
  h === 'localhost' || h.endsWith('.localhost') || h === '::1' || h === '[::1]' || h === '::ffff:127.0.0.1' || /^127\.\d+\.\d+\.\d+$/.test(h)

export function hostnameOf (url: string): string {
  try { return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1') } catch { return '' }
}

export interface BrowserRule {
  /** Names besides loopback ones a request may be addressed to (Host); absent: see loopbackOnly. */
  allowedHosts?: string[]
  /** With no allowedHosts: whether only loopback names are allowed (true when listening on loopback). */
  loopbackOnly: boolean
  /** Origins allowed besides this server's own and pages on this machine; '*' allows any. */
  corsOrigins?: string[]
}

/**
 * Why a request's Host or Origin is refused (undefined when it is not). For any HTTP server of
 * Plexus, fastify or not: a Host that is not ours is DNS rebinding; a foreign Origin is another
 * site's page driving the visitor's browser.
 */
export function refusedBrowserRequest (headers: { host?: string, origin?: string }, rule: BrowserRule): { code: 'host_not_allowed' | 'origin_not_allowed', message: string } | undefined {
  const { host, origin } = headers
  const extra = (rule.allowedHosts ?? []).map(h => h.toLowerCase())
  const name = hostnameOf(`http://${host ?? ''}`).toLowerCase()
  const hostOk = isLoopbackName(name) || extra.includes(name) || (rule.allowedHosts == null && !rule.loopbackOnly)
  if (!hostOk) {
    return { code: 'host_not_allowed', message: `refused Host ${JSON.stringify(host ?? '')}: this server answers only requests addressed to ${['localhost', '127.0.0.1', '[::1]', ...extra].join(', ')} (add a name with --allow-host)` }
  }
  if (origin == null) return undefined
  const cors = rule.corsOrigins ?? []
  const originOk = cors.includes('*') || cors.includes(origin) ||
    (origin !== 'null' && (isLoopbackName(hostnameOf(origin)) || origin === `http://${host ?? ''}` || origin === `https://${host ?? ''}`))
  if (!originOk) return { code: 'origin_not_allowed', message: `refused Origin ${JSON.stringify(origin)}: web pages from other sites may not use this server (allow one with --cors ORIGIN)` }
  return undefined
}

const JSON_TYPE = /^application\/([\w.+-]+\+)?json\s*(;|$)/i

/**
 * Installs the checks on `app`: a hook on every request (routes added later included), the
 * CORS preflight, the JSON-only body parser and the connection cap.
 */
export function guardHttp (app: FastifyInstance, limits: HttpLimits = {}): void {
  app.server.maxConnections = limits.maxConnections ?? DEFAULT_MAX_CONNECTIONS
  const listensOnLoopback = (): boolean => {
    const addr = app.server.address()
    return typeof addr === 'object' && addr != null && isLoopbackName(addr.address)
  }

  app.addHook('onRequest', async (request, reply) => {
    const refused = refusedBrowserRequest(request.headers, { ...limits, loopbackOnly: listensOnLoopback() })
    if (refused != null) throw new ApiError(403, refused.message, { code: refused.code })
    if (request.headers.origin != null) void reply.header('access-control-allow-origin', request.headers.origin).header('vary', 'Origin')
  })

  // the browser's preflight before a cross-origin JSON POST; the hook above already refused a foreign origin
  app.options('*', async (request: FastifyRequest, reply: FastifyReply) => {
    void reply.status(204)
      .header('access-control-allow-methods', 'GET, POST, DELETE, OPTIONS')
      .header('access-control-allow-headers', String(request.headers['access-control-request-headers'] ?? 'content-type, authorization'))
      .header('access-control-max-age', '600')
    return ''
  })

  // JSON only: text/plain, form encodings and multipart are what a page may send cross-site
  // without a preflight. A body without a content type is taken as JSON (some scripts send none).
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'string' }, (request, body, done) => {
    const type = request.headers['content-type']
    if (type != null && type !== '' && !JSON_TYPE.test(type)) {
      const hint = /^application\/x-www-form-urlencoded/i.test(type) ? " (curl -d sends that: add -H 'Content-Type: application/json')" : ''
      done(new ApiError(415, `unsupported content type ${JSON.stringify(type.slice(0, 100))}: send application/json${hint}`, { code: 'unsupported_media_type' }), undefined)
      return
    }
    const text = String(body)
    if (text.trim() === '') { done(null, undefined); return }
    try {
      done(null, JSON.parse(text))
    } catch (err) {
      done(new ApiError(400, `the request body is not valid JSON: ${(err as Error).message}`), undefined)
    }
  })
}
