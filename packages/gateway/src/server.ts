// The HTTP gateway: a catalog of models, three APIs (OpenAI, Anthropic, Ollama), MCP, Prometheus metrics.
import { timingSafeEqual } from 'node:crypto'
import { PLEXUS_VERSION } from '@plexus/runtime'
import { componentLog } from '@plexus/p2p'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ApiError, dialectOf, errorBody, toApiError } from './errors.ts'
import { Engine } from './engine.ts'
import type { GatewayModel } from './engine.ts'
import type { GatewaySpeculation } from './speculation.ts'
import { GatewayMetrics } from './metrics.ts'
import { unixNow, trustOf, TRUST_HEADER } from './context.ts'
import type { GatewayContext } from './context.ts'
import { registerOpenAI } from './openai.ts'
import { registerAnthropic } from './anthropic.ts'
import { registerOllama } from './ollama.ts'
import { singleModel } from './catalog.ts'
import type { ModelCatalog } from './catalog.ts'
import { Semaphore } from './semaphore.ts'
import { registerMcp, isMcpUrl, rpcError } from './mcp/http.ts'
import type { McpHttpOptions } from './mcp/http.ts'
import type { SwarmStatusSource } from './mcp/tools.ts'
import { registerDashboard, isDashboardUrl } from './dashboard-routes.ts'
import type { DashboardHandler } from './dashboard-routes.ts'
import { guardHttp, serverOptions } from './http-guard.ts'
import type { HttpLimits } from './http-guard.ts'

const log = componentLog('gateway', 'http')

export { TRUST_HEADER }

export interface ContextOptions {
  /** The one model this gateway serves (or give `catalog`). */
  model?: GatewayModel
  /** The model's name in requests and listings (default: its manifest name). */
  modelName?: string
  /** More names accepted for the model (e.g. the --model argument). */
  aliases?: string[]
  /** The models this gateway serves, opened on first use (every model of a swarm, say). */
  catalog?: ModelCatalog
  /** Generations run at once, all models together; more wait their turn (default 16). */
  maxConcurrent?: number
  /** max_tokens when a request gives none (default 512, capped by the context). */
  defaultMaxTokens?: number
  /** Node's process metrics in /metrics too (default false). */
  defaultMetrics?: boolean
  /** Trust level of requests without an X-Plexus-Trust header (default fast). */
  defaultTrust?: 'fast' | 'verified'
  /** Speculative decoding for every request that allows it (others decode plainly). */
  speculate?: GatewaySpeculation
}

export interface GatewayOptions extends ContextOptions {
  /** When set, every API route needs it (Authorization: Bearer KEY, or x-api-key: KEY), /mcp included. */
  apiKey?: string
  logger?: boolean
  /** Peers and mode of the swarm behind the catalog, for MCP's swarm_status. */
  status?: SwarmStatusSource
  /** MCP sessions open at once on /mcp, and how long an idle one lives (defaults in mcp/http.ts). */
  mcp?: Omit<McpHttpOptions, 'status'>
  /** The swarm dashboard at / (its page, assets and event stream; @plexus/p2p createDashboard). */
  dashboard?: DashboardHandler
  /** Host and Origin checks, CORS, timeouts and the connection cap (http-guard.ts). */
  http?: HttpLimits
}

export interface Gateway {
  app: FastifyInstance
  metrics: GatewayMetrics
  catalog: ModelCatalog
  /** The name of the model the gateway was started with ('' for a catalog). */
  modelName: string
  /** Listens; resolves with the base URL (http://host:port). */
  listen (port: number, host?: string): Promise<string>
  close (): Promise<void>
}


function apiKeyOf (request: FastifyRequest): string | undefined {
  const auth = request.headers.authorization
  if (typeof auth === 'string' && /^bearer\s+/i.test(auth)) return auth.replace(/^bearer\s+/i, '').trim()
  const x = request.headers['x-api-key']
  return typeof x === 'string' ? x : undefined
}

function sameKey (a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/** The models, engines, limits and metrics every API shares, HTTP or not (`plexus-client mcp` uses it without HTTP). */
export function createGatewayContext (opts: ContextOptions): GatewayContext {
  const catalog = opts.catalog ?? (opts.model != null ? singleModel(opts.model, modelNameOf(opts), opts.aliases) : undefined)
  if (catalog == null) throw new TypeError('a gateway needs a model or a catalog')
  const metrics = new GatewayMetrics({ defaultMetrics: opts.defaultMetrics })
  const slots = new Semaphore(opts.maxConcurrent ?? 16)
  const engines = new WeakMap<GatewayModel, Engine>()
  return {
    catalog,
    engineOf: ({ model }) => {
      let e = engines.get(model)
      if (e == null) engines.set(model, e = new Engine(model, metrics, { slots, speculate: opts.speculate }))
      return e
    },
    metrics,
    created: unixNow(),
    defaultMaxTokens: opts.defaultMaxTokens ?? 512,
    defaultTrust: opts.defaultTrust ?? 'fast'
  }
}

const modelNameOf = (opts: ContextOptions): string => opts.modelName ?? opts.model?.manifest?.name ?? (opts.model != null ? 'plexus' : '')

export async function createGateway (opts: GatewayOptions): Promise<Gateway> {
  const ctx = createGatewayContext(opts)
  const { catalog, metrics } = ctx
  const modelName = modelNameOf(opts)
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 16 << 20, ...serverOptions(opts.http ?? {}) })

  guardHttp(app, opts.http)

  app.addHook('onRequest', async (request, reply) => {
    const endpoint = request.routeOptions.url ?? 'unmatched'
    reply.raw.once('close', () => {
      // 499: the client went away before the response was complete (nginx's convention).
      const status = reply.raw.writableFinished ? reply.raw.statusCode : 499
      metrics.requests.inc({ endpoint, status: String(status) })
      if (status >= 400) metrics.errors.inc({ endpoint, status: String(status) })
    })
    if (request.url === '/metrics' || request.url === '/health' || request.method === 'OPTIONS' || isDashboardUrl(opts.dashboard, request.url)) return
    if (opts.apiKey != null) {
      const key = apiKeyOf(request)
      if (key == null || !sameKey(key, opts.apiKey)) {
        throw new ApiError(401, key == null ? 'missing API key: send Authorization: Bearer KEY or x-api-key: KEY' : 'Incorrect API key provided', { code: 'invalid_api_key' })
      }
    }
    trustOf(request)
  })

  app.setErrorHandler((err, request, reply) => {
    const e = toApiError(err)
    // Fastify's own logger is off: a server-side failure goes to the plexus log, stack and all
    if (e.status >= 500) log.error(err instanceof Error && err.stack != null ? err.stack : String(err), { error: err instanceof Error ? err.name : 'Error', status: e.status, url: request.url.split('?')[0] })
    void reply.status(e.status).send(isMcpUrl(request.url) ? rpcError(e.message) : errorBody(dialectOf(request.url), e))
  })
  app.setNotFoundHandler((request, reply) => {
    const e = new ApiError(404, `no route ${request.method} ${request.url.split('?')[0]}`)
    void reply.status(404).send(errorBody(dialectOf(request.url), e))
  })

  app.get('/metrics', async (_request, reply) => {
    void reply.header('content-type', metrics.registry.contentType)
    return await metrics.registry.metrics()
  })
  // ok while every model in use (open) has a server for each block and some model is servable;
  // 503 otherwise, so a load balancer or supervisor can tell
  app.get('/health', async (_request, reply) => {
    const models = await catalog.list()
    const view = await opts.status?.().catch(() => undefined)
    const broken = models.filter(m => m.loaded && !m.complete).map(m => m.name)
    const status = broken.length > 0 || !models.some(m => m.complete) ? 'degraded' : 'ok'
    void reply.status(status === 'ok' ? 200 : 503)
    return {
      status,
      ok: status === 'ok',
      version: PLEXUS_VERSION,
      ...(view?.mode != null ? { mode: view.mode } : {}),
      ...(view?.peers != null ? { peers: view.peers } : {}),
      models: models.map(m => ({ name: m.name, id: m.id, complete: m.complete, loaded: m.loaded, ...(m.coverage != null ? { coverage: m.coverage } : {}) })),
      ...(broken.length > 0 ? { uncovered: broken } : {})
    }
  })
  registerOpenAI(app, ctx)
  registerAnthropic(app, ctx)
  registerOllama(app, ctx)
  registerMcp(app, ctx, { ...opts.mcp, status: opts.status })
  if (opts.dashboard != null) registerDashboard(app, opts.dashboard)

  return {
    app,
    metrics,
    catalog,
    modelName,
    listen: async (port, host = '127.0.0.1') => {
      await app.listen({ port, host })
      const addr = app.server.address()
      const p = typeof addr === 'object' && addr != null ? addr.port : port
      return `http://${host.includes(':') ? `[${host}]` : host}:${p}`
    },
    close: async () => { opts.dashboard?.close(); await app.close(); await catalog.close?.() }
  }
}

/** Whether `host` only accepts connections from this machine. */
export function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host)
}
