// `plexus-client serve`: an OpenAI-, Anthropic- and Ollama-compatible HTTP API in front of one model.
import { basename, resolve } from 'node:path'
import { initBackend } from '@plexus/runtime'
import type { BackendName, QuantFormat } from '@plexus/runtime'
import type { WireDType } from '@plexus/protocol'
import { createGateway, isLoopback } from '@plexus/gateway'
import type { TrustLevel } from '../inference/auditor.ts'
import { openLocal, openSwarm, connectSwarm, swarmModelDir, stopNode } from '../model-source.ts'
import type { OpenModel } from '../model-source.ts'
import { UsageError } from './generate.ts'

export interface ServeArgs {
  local: boolean
  bootstrap?: string[]
  model: string
  cacheDir?: string
  quantize?: QuantFormat
  wireDtype?: WireDType
  port: number
  host: string
  apiKey?: string
  maxConcurrent: number
  backend?: BackendName | 'auto'
  json?: boolean
  trust?: TrustLevel
  checkRate?: number
  trustVerifier?: string[]
}

export async function runServe (args: ServeArgs): Promise<void> {
  if (args.local === (args.bootstrap != null && args.bootstrap.length > 0)) {
    throw new UsageError('give either --local (run every block here) or --bootstrap <multiaddr> (run through a swarm)')
  }
  const apiKey = args.apiKey ?? (process.env.PLEXUS_API_KEY !== '' ? process.env.PLEXUS_API_KEY : undefined)
  const log = (m: string): void => { process.stderr.write(`[plexus] ${m}\n`) }
  if (!isLoopback(args.host) && apiKey == null) {
    log(`WARNING: listening on ${args.host} without --api-key: anyone who can reach this port can use the model`)
  }
  const backend = await initBackend(args.backend)
  const node = args.local ? undefined : await connectSwarm(args.bootstrap!)
  let model: OpenModel | undefined
  let closing: Promise<void> | undefined
  const shutdown = async (close?: () => Promise<void>): Promise<void> => {
    await close?.().catch(() => {})
    await model?.close().catch(() => {})
    if (node != null) await stopNode(node)
  }
  try {
    model = node == null
      ? await openLocal(args.model, { quantize: args.quantize })
      : await openSwarm(node, {
        dir: await swarmModelDir(node, args.model, { cacheDir: args.cacheDir, log }), quantize: args.quantize, dtype: args.wireDtype, log, checkRate: args.checkRate, trustedVerifiers: args.trustVerifier
      })
    // A local directory has no manifest: its folder name names the model.
    const modelName = model.manifest?.name ?? basename(resolve(args.model))
    const gw = await createGateway({ model, modelName, defaultTrust: args.trust === 'verified' ? 'verified' : 'fast', aliases: [args.model], apiKey, maxConcurrent: args.maxConcurrent, defaultMetrics: true })
    const url = await gw.listen(args.port, args.host)
    if (args.json === true) process.stdout.write(JSON.stringify({ event: 'ready', url, model: gw.modelName, backend }) + '\n')
    else log(`serving ${gw.modelName} at ${url} (OpenAI ${url}/v1, Anthropic ${url}/v1/messages, Ollama ${url}/api, metrics ${url}/metrics; backend ${backend})`)
    await new Promise<void>(resolve => {
      const stop = (): void => { closing ??= shutdown(gw.close).then(resolve) }
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
    })
  } catch (err) {
    await shutdown()
    throw err
  }
}
