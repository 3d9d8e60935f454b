// MCP over streamable HTTP at /mcp (POST, GET, DELETE), on the gateway's fastify app.
//
// Sessions rather than stateless: a client cancels a call with a notifications/cancelled message
// in a later POST, and only the server instance running that call can abort its generation (and
// free its swarm session); GET streams and DELETE belong to a session too. Sessions are bounded
// (maxSessions; an initialize beyond it gets 503) and end after idleTimeoutMs without a request,
// so forgotten clients cannot pile up servers. Host and Origin are checked for every route
// (http-guard.ts), so a web page cannot reach /mcp through a visitor's browser either.
import { randomUUID } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js'
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { ApiError } from '../errors.ts'
import type { GatewayContext } from '../context.ts'
import { createMcpServer } from './tools.ts'
import type { SwarmStatusSource } from './tools.ts'

export const MCP_PATH = '/mcp'

export interface McpHttpOptions {
  status?: SwarmStatusSource
  /** MCP sessions open at once (default 64). */
  maxSessions?: number
  /** A session without a request for this long is closed (default 10 minutes). */
  idleTimeoutMs?: number
}

interface Session {
  server: McpServer
  transport: StreamableHTTPServerTransport
  lastUsed: number
  /** POSTs in progress (a running generation keeps its session from expiring). */
  busy: number
  /** JSON-RPC ids of the requests in progress: the transport answers by id, so a second request
   * with the id of one still running would take its answer and leave one HTTP request unanswered. */
  ids: Set<string>
}

/** The ids of the JSON-RPC requests (not notifications) in a POST body, one message or a batch. */
function requestIds (body: unknown): string[] {
  return (Array.isArray(body) ? body : [body]).flatMap(m =>
    m != null && typeof m === 'object' && typeof m.method === 'string' && (typeof m.id === 'string' || typeof m.id === 'number') ? [JSON.stringify(m.id)] : [])
}

const SESSION_HEADER = 'mcp-session-id'

/** A JSON-RPC error body, as MCP clients expect from /mcp. */
export function rpcError (message: string, code = -32000): unknown {
  return { jsonrpc: '2.0', error: { code, message }, id: null }
}

export const isMcpUrl = (url: string): boolean => url === MCP_PATH || url.startsWith(`${MCP_PATH}?`)

export class McpSessions {
  readonly #ctx: GatewayContext
  readonly #opts: McpHttpOptions
  /** Every live session, initialized or not (the bound counts them all). */
  readonly #live = new Set<Session>()
  readonly #byId = new Map<string, Session>()
  readonly #sweeper: NodeJS.Timeout

  constructor (ctx: GatewayContext, opts: McpHttpOptions = {}) {
    this.#ctx = ctx
    this.#opts = opts
    this.#sweeper = setInterval(() => { void this.#expire() }, Math.max(1_000, Math.min(this.#idleMs, 30_000)))
    this.#sweeper.unref()
  }

  get size (): number { return this.#live.size }
  get #max (): number { return this.#opts.maxSessions ?? 64 }
  get #idleMs (): number { return this.#opts.idleTimeoutMs ?? 600_000 }

  async handle (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const id = request.headers[SESSION_HEADER]
    let session: Session
    if (typeof id === 'string') {
      const found = this.#byId.get(id)
      // 404 tells the client to start a new session (the MCP spec's rule for an unknown id)
      if (found == null) { void reply.status(404).send(rpcError(`MCP session ${id} not found: it ended or expired; initialize a new one`)); return }
      session = found
    } else if (request.method === 'POST' && isInitializeRequest(request.body)) {
      session = await this.#open()
    } else {
      void reply.status(400).send(rpcError(`no ${SESSION_HEADER} header: send an initialize request first`))
      return
    }
    const counts = request.method === 'POST'
    const ids = counts ? requestIds(request.body) : []
    const dup = ids.find((id, i) => session.ids.has(id) || ids.indexOf(id) !== i)
    if (dup != null) { void reply.status(400).send(rpcError(`request id ${dup} is already in progress in this session: use a new id for each request`, -32600)); return }
    for (const id of ids) session.ids.add(id)
    if (counts) session.busy++
    session.lastUsed = Date.now()
    reply.hijack()
    reply.raw.once('close', () => {
      if (counts) session.busy--
      for (const id of ids) session.ids.delete(id)
      session.lastUsed = Date.now()
      // an initialize that failed leaves a session nobody can name
      if (session.transport.sessionId == null) void this.#close(session)
    })
    try {
      await session.transport.handleRequest(request.raw, reply.raw, request.body)
    } catch (err) {
      request.log.error(err)
      if (!reply.raw.headersSent) reply.raw.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify(rpcError(`internal error: ${(err as Error).message}`, -32603)))
    }
  }

  async #open (): Promise<Session> {
    if (this.#live.size >= this.#max) await this.#expire()
    if (this.#live.size >= this.#max) {
      throw new ApiError(503, `too many MCP sessions open (${this.#max}): end one (DELETE /mcp with its ${SESSION_HEADER}) or wait until an idle one expires (${Math.round(this.#idleMs / 1000)} s)`)
    }
    const session: Session = {
      server: createMcpServer(this.#ctx, { status: this.#opts.status, sessions: () => this.size }),
      transport: new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => { this.#byId.set(id, session) }
      }),
      lastUsed: Date.now(),
      busy: 0,
      ids: new Set()
    }
    // set before connect(), which chains its own handler after this one
    session.transport.onclose = () => { this.#forget(session) }
    this.#live.add(session)
    await session.server.connect(session.transport)
    return session
  }

  #forget (session: Session): void {
    this.#live.delete(session)
    const id = session.transport.sessionId
    if (id != null && this.#byId.get(id) === session) this.#byId.delete(id)
  }

  /** Closing the server aborts its running calls (their generations stop, their swarm sessions close). */
  async #close (session: Session): Promise<void> {
    this.#forget(session)
    await session.server.close().catch(() => {})
  }

  async #expire (): Promise<void> {
    const before = Date.now() - this.#idleMs
    const idle = [...this.#live].filter(s => s.busy === 0 && s.lastUsed < before)
    await Promise.all(idle.map(async s => { await this.#close(s) }))
  }

  async close (): Promise<void> {
    clearInterval(this.#sweeper)
    await Promise.all([...this.#live].map(async s => { await this.#close(s) }))
  }
}

/** POST, GET and DELETE /mcp; the gateway's API key hook runs before, as on every route. */
export function registerMcp (app: FastifyInstance, ctx: GatewayContext, opts: McpHttpOptions = {}): McpSessions {
  const sessions = new McpSessions(ctx, opts)
  app.route({
    method: ['POST', 'GET', 'DELETE'],
    url: MCP_PATH,
    handler: async (request, reply) => { await sessions.handle(request, reply) }
  })
  // open GET streams would otherwise hold app.close() until their clients leave
  app.addHook('preClose', async () => { await sessions.close() })
  return sessions
}
