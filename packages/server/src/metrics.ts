import { createServer } from 'node:http'
import type { Server } from 'node:http'
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client'
import type { BackendSet } from './backend.ts'
import type { ErrorCode } from '@plexus/protocol'

/** What a node's `GET /health` answers: ok, or why not (a block of its model without a server). */
export interface NodeHealth {
  status: 'ok' | 'starting' | 'degraded'
  [detail: string]: unknown
}

/**
 * Prometheus metrics of a node: steps, tokens, step latency, errors by code, and — read at
 * scrape time from the backends — open sessions and KV-cache bytes reserved and held.
 */
export class NodeMetrics {
  readonly registry = new Registry()
  private readonly steps: Counter<'kind'>
  private readonly tokens: Counter
  private readonly latency: Histogram<'kind'>
  private readonly errors: Counter<'code'>

  constructor (components: { backends: () => BackendSet | undefined }) {
    const r = this.registry
    collectDefaultMetrics({ register: r, prefix: 'plexus_node_process_' })
    this.steps = new Counter({ name: 'plexus_node_steps_total', help: 'Steps served, by kind (prefill: more than one token)', labelNames: ['kind'], registers: [r] })
    this.tokens = new Counter({ name: 'plexus_node_tokens_total', help: 'Token positions computed', registers: [r] })
    this.latency = new Histogram({
      name: 'plexus_node_step_seconds', help: 'Compute time of one step', labelNames: ['kind'], registers: [r],
      buckets: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30]
    })
    this.errors = new Counter({ name: 'plexus_node_errors_total', help: 'Error answers sent, by code', labelNames: ['code'], registers: [r] })
    const all = (): ReturnType<BackendSet['all']> => components.backends()?.all() ?? []
    new Gauge({ name: 'plexus_node_sessions', help: 'Open inference sessions', registers: [r], collect () { this.set(all().reduce((n, b) => n + b.sessionCount, 0)) } })
    new Gauge({ name: 'plexus_node_cache_reserved_bytes', help: 'KV-cache bytes reserved by open sessions (at their max length)', registers: [r], collect () { this.set(all().reduce((n, b) => n + b.reservedBytes, 0)) } })
    new Gauge({ name: 'plexus_node_cache_used_bytes', help: 'KV-cache bytes held now', registers: [r], collect () { this.set(all().reduce((n, b) => n + b.cacheBytesInUse(), 0)) } })
    new Gauge({ name: 'plexus_node_blocks_served', help: 'Blocks served', registers: [r], collect () { this.set(all().reduce((n, b) => n + (b.end - b.start), 0)) } })
  }

  /** Token positions computed since start (the dashboard's tokens/s reads it every second). */
  tokensTotal = 0

  step (info: { tokens: number, computeMs: number }): void {
    this.tokensTotal += info.tokens
    const kind = info.tokens > 1 ? 'prefill' : 'decode'
    this.steps.inc({ kind })
    this.tokens.inc(info.tokens)
    this.latency.observe({ kind }, info.computeMs / 1000)
  }

  error (code: ErrorCode): void { this.errors.inc({ code }) }

  /**
   * Serves `GET /metrics` and `GET /health` (200 while `health()` says ok, else 503) on
   * `host:port` (port 0: any free port); resolves with the bound port.
   */
  async listen (port: number, host = '127.0.0.1', opts: { health?: () => Promise<NodeHealth> } = {}): Promise<{ port: number, close: () => Promise<void> }> {
    const server: Server = createServer((req, res) => {
      const path = req.url?.split('?')[0]
      if (req.method === 'GET' && path === '/health') {
        const report = opts.health?.() ?? Promise.resolve<NodeHealth>({ status: 'ok' })
        report.then(h => {
          res.writeHead(h.status === 'ok' ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h) + '\n')
        }, err => {
          res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'error', error: String(err?.message ?? err) }) + '\n')
        })
        return
      }
      if (req.method !== 'GET' || path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try GET /metrics or GET /health\n')
        return
      }
      this.registry.metrics().then(text => {
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(text)
      }, err => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`)
      })
    })
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => resolve()) })
    const bound = (server.address() as { port: number }).port
    return { port: bound, close: async () => { await new Promise(resolve => server.close(() => resolve(undefined))) } }
  }
}
