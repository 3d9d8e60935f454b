// What every API's routes share: the engine, the model's names and request limits.
import { randomBytes } from 'node:crypto'
import { ApiError, badRequest } from './errors.ts'
import type { Dialect } from './errors.ts'
import type { FastifyRequest } from 'fastify'
import type { Engine } from './engine.ts'

export interface GatewayContext {
  engine: Engine
  /** The name clients use for the one model this gateway serves. */
  modelName: string
  /** Also accepted as the model: its id, the --model argument. */
  aliases: Set<string>
  /** Unix seconds the gateway started (OpenAI's `created` of the model). */
  created: number
  /** max_tokens when a request gives none (capped by what the context leaves). */
  defaultMaxTokens: number
  /** Trust level of requests without an X-Plexus-Trust header. */
  defaultTrust: 'fast' | 'verified'
}

/** The request's `model` must be this gateway's model: 400 when missing, 404 when another. */
export function checkModel (ctx: GatewayContext, model: unknown, dialect: Dialect): string {
  if (model == null || model === '') throw badRequest('missing required field model', { param: 'model' })
  if (typeof model !== 'string') throw badRequest('model must be a string', { param: 'model' })
  const bare = dialect === 'ollama' ? model.replace(/:latest$/, '') : model
  if (bare === ctx.modelName || ctx.aliases.has(bare)) return ctx.modelName
  const message = dialect === 'ollama'
    ? `model "${model}" not found: this gateway serves "${ctx.modelName}"`
    : `The model \`${model}\` does not exist: this gateway serves \`${ctx.modelName}\``
  throw new ApiError(404, message, { param: 'model', code: 'model_not_found' })
}

export const newId = (prefix: string): string => `${prefix}${randomBytes(12).toString('hex')}`
export const unixNow = (): number => Math.floor(Date.now() / 1000)

/** The header carrying a request's trust level. */
export const TRUST_HEADER = 'x-plexus-trust'

/** The request's trust level (X-Plexus-Trust, else the gateway's default). */
export function trustOf (request: FastifyRequest, fallback: 'fast' | 'verified' = 'fast'): 'fast' | 'verified' {
  const raw = request.headers[TRUST_HEADER]
  if (raw == null) return fallback
  const mode = String(raw).trim().toLowerCase()
  if (mode === '') return fallback
  if (mode === 'fast' || mode === 'verified') return mode
  if (mode === 'attested') {
    throw new ApiError(501, 'X-Plexus-Trust: attested is not supported yet: it needs hardware attestation of the servers (TEE quotes), which Plexus does not implement; send "verified" (spot checks) or "fast"', { param: 'X-Plexus-Trust', code: 'trust_mode_not_supported' })
  }
  throw new ApiError(400, `X-Plexus-Trust must be fast, verified or attested (got ${JSON.stringify(String(raw))})`, { param: 'X-Plexus-Trust' })
}
