// The dashboard over HTTP: the page and its assets (shipped in this package, no CDN), the swarm
// view as JSON and as a server-sent event stream. Read-only; plain node:http request/response,
// so a node's own server and the gateway (fastify, hijacked replies) serve the same handler.
import { createServer } from 'node:http'
import type { IncomingMessage, ServerResponse, Server } from 'node:http'
import { readFileSync } from 'node:fs'
import { DashboardHub } from './hub.ts'
import type { DashboardSource } from './hub.ts'

/** Event streams open at once; more are answered 503. */
export const DEFAULT_MAX_WATCHERS = 16

const ASSETS: Record<string, { file: string, type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/dashboard/icon.svg': { file: 'icon.svg', type: 'image/svg+xml' }
}
const VIEW_PATH = '/dashboard/view'
const EVENTS_PATH = '/dashboard/events'

/** Every path the dashboard answers (GET and HEAD). */
export const DASHBOARD_PATHS = [...Object.keys(ASSETS), VIEW_PATH, EVENTS_PATH]

const HEADERS = {
  'x-content-type-options': 'nosniff',
  // the page loads only its own script and style, and talks only to this server
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer'
}

export interface DashboardOptions extends DashboardSource {
  maxWatchers?: number
}

export interface Dashboard {
  readonly hub: DashboardHub
  /** Every path `handle` answers. */
  readonly paths: readonly string[]
  /** Answers a request for one of DASHBOARD_PATHS; false (nothing sent) for any other. */
  handle (req: IncomingMessage, res: ServerResponse): boolean
  /** Ends every event stream and stops sampling. */
  close (): void
}

const assetCache = new Map<string, Buffer>()
function asset (file: string): Buffer {
  let b = assetCache.get(file)
  if (b == null) {
    b = readFileSync(new URL(`./assets/${file}`, import.meta.url))
    assetCache.set(file, b)
  }
  return b
}

export function createDashboard (opts: DashboardOptions): Dashboard {
  const hub = new DashboardHub(opts)
  const maxWatchers = opts.maxWatchers ?? DEFAULT_MAX_WATCHERS
  const streams = new Set<ServerResponse>()

  const handle = (req: IncomingMessage, res: ServerResponse): boolean => {
    const path = (req.url ?? '/').split('?')[0]
    if (!DASHBOARD_PATHS.includes(path)) return false
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('the dashboard is read-only: GET only\n')
      return true
    }
    const a = ASSETS[path]
    if (a != null) {
      const body = asset(a.file)
      res.writeHead(200, { ...HEADERS, 'content-type': a.type, 'content-length': body.byteLength, 'cache-control': 'no-cache' })
      res.end(req.method === 'HEAD' ? undefined : body)
      return true
    }
    if (path === VIEW_PATH) {
      hub.current().then(view => {
        res.writeHead(200, { ...HEADERS, 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(view))
      }, (err: Error) => {
        res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: err.message }))
      })
      return true
    }
    if (streams.size >= maxWatchers) {
      res.writeHead(503, { 'content-type': 'text/plain', 'retry-after': '10' }).end(`the dashboard already has ${maxWatchers} live pages open; try again later\n`)
      return true
    }
    res.writeHead(200, { ...HEADERS, 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' })
    res.flushHeaders()
    if (req.method === 'HEAD') { res.end(); return true }
    streams.add(res)
    // a client that stops reading must not grow this process's buffers: skip frames until it drains
    const unsubscribe = hub.subscribe(view => {
      if (res.writableNeedDrain) return
      res.write(`data: ${JSON.stringify(view)}\n\n`)
    })
    const done = (): void => { unsubscribe(); streams.delete(res) }
    res.once('close', done)
    req.once('close', done)
    return true
  }

  return {
    hub,
    paths: DASHBOARD_PATHS,
    handle,
    close: () => {
      hub.close()
      for (const s of streams) s.end()
      streams.clear()
    }
  }
}

/**
 * A server of its own for the dashboard (a node's `--dashboard-port`). Bound to loopback, it
 * also refuses a Host header naming another machine, so a web page cannot read it through
 * DNS rebinding.
 */
export async function listenDashboard (dashboard: Dashboard, port: number, host = '127.0.0.1'): Promise<{ port: number, url: string, close: () => Promise<void> }> {
  const loopback = isLoopbackHost(host)
  const server: Server = createServer((req, res) => {
    if (loopback && !isLoopbackHost(hostOf(req.headers.host))) {
      res.writeHead(403, { 'content-type': 'text/plain' }).end('this dashboard answers only to localhost (Host header)\n')
      return
    }
    if (!dashboard.handle(req, res)) res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the dashboard is at /\n')
  })
  // bounded: a few pages and their streams, not an open door
  server.maxConnections = DEFAULT_MAX_WATCHERS * 4
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => resolve()) })
  const bound = (server.address() as { port: number }).port
  return {
    port: bound,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}/`,
    close: async () => {
      dashboard.close()
      await new Promise(resolve => server.close(() => resolve(undefined)))
    }
  }
}

function hostOf (header: string | undefined): string {
  if (header == null) return ''
  const m = /^\[([^\]]+)\]|^([^:]+)/.exec(header)
  return m?.[1] ?? m?.[2] ?? ''
}

function isLoopbackHost (host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host)
}
