// Prometheus metrics; one registry per gateway so several gateways can share a process (tests).
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client'

export class GatewayMetrics {
  readonly registry = new Registry()
  readonly generatedTokens: Counter
  readonly requests: Counter<'endpoint' | 'status'>
  readonly errors: Counter<'endpoint' | 'status'>
  readonly tokenLatency: Histogram<'phase'>
  readonly openSessions: Gauge
  readonly draftTokens: Counter<'result'>

  constructor (opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry]
    this.generatedTokens = new Counter({ name: 'plexus_gateway_generated_tokens_total', help: 'Tokens generated for clients', registers })
    this.requests = new Counter({ name: 'plexus_gateway_requests_total', help: 'HTTP requests by endpoint and status', labelNames: ['endpoint', 'status'], registers })
    this.errors = new Counter({ name: 'plexus_gateway_errors_total', help: 'Requests that ended in an error, by endpoint and status', labelNames: ['endpoint', 'status'], registers })
    this.tokenLatency = new Histogram({
      name: 'plexus_gateway_token_latency_seconds',
      help: 'Time to produce a token: prefill = first token (whole prompt), decode = each later token',
      labelNames: ['phase'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers
    })
    this.openSessions = new Gauge({ name: 'plexus_gateway_open_sessions', help: 'Inference sessions open through the swarm (or local model)', registers })
    // --speculate: accepted / (accepted + rejected) is the acceptance rate
    this.draftTokens = new Counter({ name: 'plexus_gateway_draft_tokens_total', help: 'Speculative draft tokens the model accepted or rejected', labelNames: ['result'], registers })
    if (opts.defaultMetrics === true) collectDefaultMetrics({ register: this.registry })
  }
}
