// `plexus-client serve`: an OpenAI-, Anthropic- and Ollama-compatible HTTP API in front of one
// local model, or of every model a swarm serves.
import { initBackend, UsageError } from '@plexus/runtime'
import { createGateway, isLoopback } from '@plexus/gateway'
import { openGatewayCatalog } from '../gateway-catalog.ts'
import type { GatewayCatalog } from '../gateway-catalog.ts'
import { createLog, progressReporter, progressStyle, quantizeFormat } from '@plexus/p2p'
import { gatewayDashboard } from '../gateway-dashboard.ts'
import { openSpeculation } from '../gateway-speculation.ts'
import type { ServeArgs } from '../cli-options.ts'

export type { ServeArgs }

export async function runServe (args: ServeArgs): Promise<void> {
  if (args.local === (args.bootstrap != null && args.bootstrap.length > 0)) {
    throw new UsageError('give either --local (run every block here) or --bootstrap <multiaddr> (run through a swarm)')
  }
  if (args.local && args.model == null) throw new UsageError('--local needs --model DIR or FILE.gguf')
  // $PLEXUS_API_KEY arrives as --api-key (cli-config.ts)
  const apiKey = args.apiKey
  const clientLog = createLog('client')
  const log = (m: string): void => { clientLog.info(m) }
  if (!isLoopback(args.host) && apiKey == null) {
    clientLog.warn(`listening on ${args.host} without --api-key: anyone who can reach this port can use the model`)
  }
  const backend = await initBackend(args.backend, { note: log })
  const spec = await openSpeculation(args)
  let models: GatewayCatalog
  try {
    models = await openGatewayCatalog({ ...args, quantize: quantizeFormat(args.quantize), onProgress: progressReporter({ log: clientLog, style: progressStyle({ json: args.json }) }) })
  } catch (err) {
    await spec.close()
    throw err
  }
  let closing: Promise<void> | undefined
  try {
    const board = gatewayDashboard(models)
    const gw = await createGateway({ catalog: models.catalog, modelName: models.defaultName, defaultTrust: args.trust === 'verified' ? 'verified' : 'fast', speculate: spec.speculate, apiKey, maxConcurrent: args.maxConcurrent, defaultMetrics: true, status: models.status, dashboard: board.dashboard,
      http: { corsOrigins: args.cors, allowedHosts: args.allowHost, requestTimeoutMs: args.requestTimeout != null ? args.requestTimeout * 1000 : undefined, maxConnections: args.maxConnections }
    })
    const url = await gw.listen(args.port, args.host)
    board.watch(gw.metrics)
    const what = models.defaultName ?? 'every model of the swarm'
    if (args.json === true) process.stdout.write(JSON.stringify({ event: 'ready', url, model: models.defaultName ?? null, backend }) + '\n')
    else log(`serving ${what} at ${url} (OpenAI ${url}/v1, Anthropic ${url}/v1/messages, Ollama ${url}/api, MCP ${url}/mcp, metrics ${url}/metrics, dashboard ${url}/; backend ${backend})`)
    await new Promise<void>(resolve => {
      const stop = (): void => { closing ??= gw.close().catch(() => {}).then(async () => { await models.close(); await spec.close() }).then(resolve) }
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
    })
  } catch (err) {
    await models.close().catch(() => {})
    await spec.close().catch(() => {})
    throw err
  }
}
