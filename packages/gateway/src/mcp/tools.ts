// The gateway as an MCP server: tools to generate and chat with the catalog's models, list them
// with their coverage, and report the swarm's state. Generation takes the same Engine path as the
// HTTP APIs (same slots, limits, metrics), so an MCP call and an OpenAI request give the same text.
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import type { CallToolResult, ServerNotification, ServerRequest } from '@modelcontextprotocol/sdk/types.js'
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js'
import { z } from 'zod'
import { PLEXUS_VERSION, parseTrust } from '@plexus/runtime'
import type { SamplingOptions, SupportedTrust } from '@plexus/runtime'
import { ApiError, toApiError } from '../errors.ts'
import { resolveModel, TRUST_HEADER } from '../context.ts'
import type { GatewayContext, Resolved } from '../context.ts'
import type { CatalogEntry } from '../catalog.ts'

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>

/** What the swarm looks like from here (the client's `SwarmStatus` fits). */
export interface SwarmView {
  mode?: 'local' | 'swarm'
  /** Peers this gateway's node is connected to. */
  peers?: number
}
export type SwarmStatusSource = () => Promise<SwarmView>

export interface McpServerOptions {
  status?: SwarmStatusSource
  /** Open MCP sessions (streamable HTTP), for swarm_status. */
  sessions?: () => number
}

const modelField = z.string().min(1).optional()
  .describe('Model name, id or id prefix (see list_models); may be left out when exactly one model is served')

const samplingFields = {
  max_tokens: z.number().int().positive().optional().describe("Most tokens to generate (default: the gateway's default, capped by the model's context)"),
  temperature: z.number().min(0).max(2).optional().describe('0 = greedy (the same text every time); default 1'),
  top_p: z.number().gt(0).max(1).optional().describe('Sample among the most likely tokens whose probabilities add up to top_p'),
  seed: z.number().int().optional().describe('Seed for reproducible sampling'),
  stop: z.array(z.string()).max(16).optional().describe('Generation ends before the first of these strings')
}
type SamplingArgs = { [K in keyof typeof samplingFields]?: z.infer<(typeof samplingFields)[K]> }

const completionOutput = {
  model: z.string(),
  text: z.string(),
  finish_reason: z.enum(['stop', 'length']),
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int()
}

const modelOutput = z.object({
  name: z.string(),
  id: z.string().optional(),
  complete: z.boolean().describe('every block has a server'),
  blocks: z.number().int().optional(),
  coverage: z.array(z.number().int()).optional().describe('servers holding each block, in block order'),
  servers: z.number().int().optional(),
  formats: z.array(z.string()).optional(),
  backends: z.array(z.string()).optional(),
  context_length: z.number().int().optional(),
  loaded: z.boolean().describe('open in this gateway now')
})

/** A new MCP server over `ctx`; one per stdio process or per streamable HTTP session. */
export function createMcpServer (ctx: GatewayContext, opts: McpServerOptions = {}): McpServer {
  const server = new McpServer({ name: 'plexus', version: PLEXUS_VERSION })

  server.registerTool('generate', {
    title: 'Generate text',
    description: 'Continue a prompt with a model of the Plexus swarm (plain completion, no chat template).',
    inputSchema: { model: modelField, prompt: z.string().min(1).describe('The text to continue'), ...samplingFields },
    outputSchema: completionOutput
  }, async ({ model, prompt, ...s }, extra) => await toolResult(async () => {
    const m = await pick(ctx, model)
    return await complete(ctx, m, await m.engine.encodeText(prompt), s, extra)
  }))

  server.registerTool('chat', {
    title: 'Chat',
    description: "Answer a conversation with a model of the Plexus swarm, through the model's chat template.",
    inputSchema: {
      model: modelField,
      messages: z.array(z.object({
        role: z.enum(['system', 'user', 'assistant']),
        content: z.string()
      })).min(1).describe('The conversation so far, oldest first'),
      ...samplingFields
    },
    outputSchema: completionOutput
  }, async ({ model, messages, ...s }, extra) => await toolResult(async () => {
    const m = await pick(ctx, model)
    return await complete(ctx, m, await m.engine.encodeChat(messages), s, extra)
  }))

  server.registerTool('list_models', {
    title: 'List models',
    description: 'The models this gateway serves: how many servers hold each block (complete when every block has one), weight formats, compute backends, context length.',
    outputSchema: { models: z.array(modelOutput) },
    annotations: { readOnlyHint: true }
  }, async () => await toolResult(async () => {
    const models = (await ctx.catalog.list()).map(modelView)
    const text = models.length === 0 ? 'no models are served yet' : models.map(describe).join('\n')
    return { content: [{ type: 'text', text }], structuredContent: { models } }
  }))

  server.registerTool('swarm_status', {
    title: 'Swarm status',
    description: "The swarm behind this gateway: its models' coverage, connected peers, open inference sessions and tokens generated so far.",
    outputSchema: {
      mode: z.enum(['local', 'swarm']).optional(),
      peers: z.number().int().optional(),
      models: z.array(modelOutput),
      open_sessions: z.number().int().describe('inference sessions open now, all APIs together'),
      generated_tokens: z.number().int().describe('tokens generated since the gateway started'),
      mcp_sessions: z.number().int().optional()
    },
    annotations: { readOnlyHint: true }
  }, async () => await toolResult(async () => {
    const [view, entries] = await Promise.all([opts.status?.() ?? Promise.resolve<SwarmView>({}), ctx.catalog.list()])
    const models = entries.map(modelView)
    const status = {
      mode: view.mode,
      peers: view.peers,
      models,
      open_sessions: await metricValue(ctx.metrics.openSessions),
      generated_tokens: await metricValue(ctx.metrics.generatedTokens),
      mcp_sessions: opts.sessions?.()
    }
    const lines = [
      `${view.mode === 'local' ? 'local model (no swarm)' : view.peers != null ? `swarm: ${view.peers} connected peer(s)` : 'swarm'}`,
      `${status.open_sessions} open session(s), ${status.generated_tokens} token(s) generated`,
      ...models.map(describe)
    ]
    return { content: [{ type: 'text', text: lines.join('\n') }], structuredContent: status }
  }))

  return server
}

/** The named model, or the only one served when none is named. */
async function pick (ctx: GatewayContext, model: string | undefined): Promise<Resolved> {
  if (model == null) {
    const names = await ctx.catalog.names()
    if (names.length === 0) throw new ApiError(404, 'this gateway serves no model yet', { param: 'model' })
    if (names.length > 1) throw new ApiError(400, `name a model: this gateway serves ${names.map(n => JSON.stringify(n)).join(', ')}`, { param: 'model' })
    model = names[0]
  }
  return await resolveModel(ctx, model, 'openai')
}

async function complete (ctx: GatewayContext, { name, engine }: Resolved, promptIds: number[], s: SamplingArgs, extra: Extra): Promise<CallToolResult> {
  const sampling: SamplingOptions = { temperature: s.temperature ?? 1, topP: s.top_p, seed: s.seed }
  engine.checkSampling(sampling)
  const r = await engine.run({
    promptIds,
    maxTokens: engine.maxTokens(promptIds.length, s.max_tokens, ctx.defaultMaxTokens),
    sampling,
    stop: s.stop,
    trust: trustOf(extra, ctx.defaultTrust),
    // cancelled by the client (notifications/cancelled), or its session closing
    signal: extra.signal
  })
  const out = { model: name, text: r.text, finish_reason: r.finishReason, prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens }
  return { content: [{ type: 'text', text: r.text }], structuredContent: out }
}

/** X-Plexus-Trust on HTTP (the gateway's hook already refused bad values); stdio has no headers. */
function trustOf (extra: Extra, fallback: SupportedTrust): SupportedTrust {
  const raw = extra.requestInfo?.headers?.[TRUST_HEADER]
  return typeof raw === 'string' && raw.trim() !== '' ? parseTrust(raw, 'X-Plexus-Trust') : fallback
}

/** Failures as MCP tool errors (`isError`), with the same messages the HTTP APIs give. */
async function toolResult (run: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await run()
  } catch (err) {
    return { isError: true, content: [{ type: 'text', text: toApiError(err).message }] }
  }
}

function modelView (m: CatalogEntry): z.infer<typeof modelOutput> {
  return {
    name: m.name,
    id: m.id,
    complete: m.complete,
    blocks: m.numBlocks,
    coverage: m.coverage,
    servers: m.servers,
    formats: m.formats,
    backends: m.backends,
    context_length: m.contextLength,
    loaded: m.loaded
  }
}

/** One line per model, e.g. "small  complete, 12 blocks × servers 0-5: 2, 6-11: 1; f32; webgpu". */
function describe (m: z.infer<typeof modelOutput>): string {
  const parts = [m.complete ? 'complete' : 'incomplete (some blocks have no server)']
  if (m.blocks != null) parts.push(`${m.blocks} blocks${m.coverage != null ? ` × servers ${coverageText(m.coverage)}` : ''}`)
  if (m.servers != null) parts.push(`${m.servers} server(s)`)
  if (m.formats != null && m.formats.length > 0) parts.push(`weights ${m.formats.join(', ')}`)
  if (m.backends != null && m.backends.length > 0) parts.push(`computed on ${m.backends.join(', ')}`)
  if (m.context_length != null) parts.push(`context ${m.context_length}`)
  parts.push(m.loaded ? 'loaded' : 'opened on first use')
  return `${m.name}${m.id != null ? ` (${m.id.slice(0, 12)})` : ''}: ${parts.join('; ')}`
}

/** Runs of blocks with the same number of servers: "0-5: 2, 6-11: 0". */
function coverageText (coverage: number[]): string {
  const runs: string[] = []
  for (let i = 0; i < coverage.length;) {
    let j = i
    while (j + 1 < coverage.length && coverage[j + 1] === coverage[i]) j++
    runs.push(`${i === j ? i : `${i}-${j}`}: ${coverage[i]}`)
    i = j + 1
  }
  return runs.join(', ')
}

async function metricValue (metric: { get: () => Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await metric.get()).values[0]?.value ?? 0
}
