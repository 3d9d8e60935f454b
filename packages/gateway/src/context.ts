// What every API's routes share: the engine, the model's names and request limits.
import { randomBytes } from 'node:crypto'
import { parseTrust } from '@plexus/runtime'
import type { SupportedTrust } from '@plexus/runtime'
import { ApiError, badRequest } from './errors.ts'
import type { Dialect } from './errors.ts'
import type { FastifyRequest } from 'fastify'
import type { Engine } from './engine.ts'
import type { ModelCatalog } from './catalog.ts'
import type { GatewayMetrics } from './metrics.ts'

export interface GatewayContext {
  /** The models requests may name. */
  catalog: ModelCatalog
  /** The engine of an opened model (one per model, sharing the gateway's generation slots). */
  engineOf: (opened: { name: string, model: Engine['model'] }) => Engine
  metrics: GatewayMetrics
  /** Unix seconds the gateway started (OpenAI's `created` of the model). */
  created: number
  /** max_tokens when a request gives none (capped by what the context leaves). */
  defaultMaxTokens: number
  /** Trust level of requests without an X-Plexus-Trust header. */
  defaultTrust: 'fast' | 'verified'
}

/** A model a request named, with its engine. */
export interface Resolved { name: string, engine: Engine }

/** The request's `model`, opened (on first use) from the catalog: 400 when missing, 404 when unknown. */
export async function resolveModel (ctx: GatewayContext, model: unknown, dialect: Dialect): Promise<Resolved> {
  if (model == null || model === '') throw badRequest('missing required field model', { param: 'model' })
  if (typeof model !== 'string') throw badRequest('model must be a string', { param: 'model' })
  const bare = dialect === 'ollama' ? model.replace(/:latest$/, '') : model
  const opened = await ctx.catalog.open(bare)
  if (opened != null) return { name: opened.name, engine: ctx.engineOf(opened) }
  const names = (await ctx.catalog.names()).map(n => JSON.stringify(n)).join(', ')
  const serves = names === '' ? 'this gateway serves no model yet' : `this gateway serves ${names}`
  const message = dialect === 'ollama'
    ? `model "${model}" not found: ${serves}`
    : `The model \`${model}\` does not exist: ${serves}`
  throw new ApiError(404, message, { param: 'model', code: 'model_not_found' })
}

export const newId = (prefix: string): string => `${prefix}${randomBytes(12).toString('hex')}`
export const unixNow = (): number => Math.floor(Date.now() / 1000)

/** The header carrying a request's trust level. */
export const TRUST_HEADER = 'x-plexus-trust'

/** The request's trust level (X-Plexus-Trust, else the gateway's default); a TrustError for one it cannot honour. */
export function trustOf (request: FastifyRequest, fallback: SupportedTrust = 'fast'): SupportedTrust {
  const raw = request.headers[TRUST_HEADER]
  if (raw == null || String(raw).trim() === '') return fallback
  return parseTrust(String(raw), 'X-Plexus-Trust')
}
