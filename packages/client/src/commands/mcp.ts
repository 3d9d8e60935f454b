// `plexus-client mcp`: an MCP server on stdin/stdout (for Claude Desktop and other MCP clients)
// with the gateway's tools: generate, chat, list_models, swarm_status.
import { initBackend, UsageError } from '@plexus/runtime'
import { createGatewayContext, createMcpServer } from '@plexus/gateway'
import type { ModelCatalog } from '@plexus/gateway'
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js'
import { openGatewayCatalog } from '../gateway-catalog.ts'
import type { GatewayCatalog } from '../gateway-catalog.ts'
import { openSpeculation } from '../gateway-speculation.ts'
import type { McpArgs } from '../cli-options.ts'
import { createLog, progressReporter, quantizeFormat } from '@plexus/p2p'

export type { McpArgs }

/** A catalog whose calls wait for the models to open, so the MCP handshake need not. */
function pending (opening: Promise<GatewayCatalog>): ModelCatalog {
  return {
    list: async () => await (await opening).catalog.list(),
    open: async (name) => await (await opening).catalog.open(name),
    names: async () => await (await opening).catalog.names()
  }
}

export async function runMcp (args: McpArgs): Promise<void> {
  if (args.local === (args.bootstrap != null && args.bootstrap.length > 0)) {
    throw new UsageError('give either --local (run every block here) or --bootstrap <multiaddr> (run through a swarm)')
  }
  if (args.local && args.model == null) throw new UsageError('--local needs --model DIR or FILE.gguf')
  // stdout carries the protocol: anything a library prints there would corrupt it
  console.log = console.info = console.debug = console.error
  const clientLog = createLog('client')
  const log = (m: string): void => { clientLog.info(m) }
  const backend = await initBackend(args.backend, { note: log })

  // a draft model loads before the handshake: a bad --draft-model fails at start
  const spec = await openSpeculation(args)
  // MCP clients time out a slow handshake: answer it at once and open the models meanwhile
  const opening = openGatewayCatalog({ ...args, quantize: quantizeFormat(args.quantize), onProgress: progressReporter({ log: clientLog }) })
  opening.catch(() => {})
  const ctx = createGatewayContext({ catalog: pending(opening), maxConcurrent: args.maxConcurrent, defaultTrust: args.trust === 'verified' ? 'verified' : 'fast', speculate: spec.speculate })
  const server = createMcpServer(ctx, { status: async () => await (await opening).status() })

  let closing: Promise<void> | undefined
  const shutdown = async (): Promise<void> => {
    closing ??= (async () => {
      await server.close().catch(() => {})
      await (await opening.catch(() => undefined))?.close().catch(() => {})
      await spec.close().catch(() => {})
    })()
    await closing
  }
  const ended = new Promise<void>(resolve => {
    const stop = (): void => { void shutdown().then(resolve) }
    process.stdin.once('end', stop)
    process.stdin.once('close', stop)
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
  await server.connect(new StdioServerTransport())
  try {
    const models = await opening
    log(`MCP server on stdio: ${models.defaultName ?? 'every model of the swarm'} (backend ${backend}); tools generate, chat, list_models, swarm_status`)
  } catch (err) {
    await shutdown()
    throw err
  }
  await ended
  // a library's stray timer or socket must not keep a finished stdio server alive
  setTimeout(() => { process.exit(0) }, 1000).unref()
}
