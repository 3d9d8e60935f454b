import { readFileSync } from 'node:fs'
import { Ajv } from 'ajv'
import type { ValidateFunction } from 'ajv'
import { f32ToF16, f32ToBf16, toFloat32 } from '@plexus/runtime'
import { SCHEMA_DIR } from '@plexus/p2p'
import { MAX_SESSION_HEADER_BYTES, SESSION_PREAMBLE_BYTES, WIRE_VERSION } from './session-limits.ts'
import type { ChannelCodec } from '@plexus/p2p'

export type WireDType = 'f32' | 'f16' | 'bf16'
const DTYPE_BYTES: Record<WireDType, number> = { f32: 4, f16: 2, bf16: 2 }

export type ErrorCode = 'bad-frame' | 'bad-request' | 'bad-tensor' | 'unknown-session' | 'closed-session' | 'not-served' | 'busy' | 'too-long' | 'next-hop' | 'internal'

/** Where a server of a forwarded route pushes its output: the client's session on the next server. */
export interface NextHop { peer: string, sessionId: string, addrs?: string[] }
export interface OpenMessage { type: 'open', sessionId: string, modelId: string, start: number, end: number, maxLength: number
  /** Forwarded route: push every step's output to this session (which names this server as `prev`). */
  next?: NextHop
  /** Forwarded route: steps come from this peer's `attach`ed stream, not from the client. */
  prev?: string
  /** Forwarded route: send the client every output too (spot checks need them), not only the commitment. */
  returnOutputs?: boolean
}
/** Forwarder → next server: this stream feeds `sessionId` (opened by the client naming the forwarder as `prev`). */
export interface AttachMessage { type: 'attach' | 'attached', sessionId: string }
/** Server → client on a forwarded route: the step's output went to the next hop; here is the commitment to it. */
export interface ForwardedMessage { type: 'forwarded', sessionId: string, step: number, position: number, tokens: number, computeMs: number, commitment?: string }
export interface OpenedMessage { type: 'opened', sessionId: string, start: number, end: number, length: number }
/** Hidden states `[tokens, hidden]` for positions `[position, position + tokens)`. */
export interface StepMessage { type: 'step' | 'result', sessionId: string, step: number, position: number, tokens: number, hidden: number, dtype: WireDType, computeMs?: number, data: Float32Array
  /** On results: the server's signed step commitment (commitment.ts). */
  commitment?: string
  /**
   * On steps: drop the cached positions from `position` on first (rejected speculative drafts),
   * so a rollback rides on the next step instead of costing a truncate round trip.
   */
  rewind?: boolean
}
export interface TruncateMessage { type: 'truncate' | 'truncated', sessionId: string, length: number }
export interface CloseMessage { type: 'close', sessionId: string }
export interface ErrorMessage { type: 'error', code: ErrorCode, message: string }
export type SessionMessage = OpenMessage | OpenedMessage | StepMessage | TruncateMessage | CloseMessage | ErrorMessage | AttachMessage | ForwardedMessage

/** A protocol violation: answered with an `error` frame carrying `code`, then the stream closes. */
export class ProtocolError extends Error {
  readonly code: ErrorCode
  constructor (code: ErrorCode, message: string) {
    super(message)
    this.name = 'ProtocolError'
    this.code = code
  }
}

/** Per-type validators compiled from schemas/session-message.schema.json. */
const validators: Map<string, ValidateFunction> = (() => {
  const schema = JSON.parse(readFileSync(`${SCHEMA_DIR}session-message.schema.json`, 'utf8'))
  const ajv = new Ajv({ allErrors: false, strict: true })
  const m = new Map<string, ValidateFunction>()
  for (const variant of schema.oneOf) {
    const t = variant.properties.type
    const v = ajv.compile({ ...variant, definitions: schema.definitions })
    for (const name of t.const != null ? [t.const] : t.enum) m.set(name, v)
  }
  return m
})()

function checkHeader (h: unknown): asserts h is Record<string, any> {
  if (h == null || typeof h !== 'object' || Array.isArray(h)) throw new ProtocolError('bad-frame', 'frame header is not a JSON object')
  const type = (h as any).type
  const v = typeof type === 'string' ? validators.get(type) : undefined
  if (v == null) throw new ProtocolError('bad-frame', `unknown message type ${JSON.stringify(type)}`)
  if (!v(h)) {
    const e = v.errors?.[0]
    throw new ProtocolError('bad-frame', `invalid ${type} message: ${e?.instancePath || 'header'} ${e?.message ?? 'is invalid'}${e?.params != null && 'additionalProperty' in e.params ? ` (${e.params.additionalProperty})` : ''}`)
  }
}

export function encodeTensor (data: Float32Array, dtype: WireDType): Uint8Array {
  switch (dtype) {
    case 'f32': return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    case 'f16': { const u = f32ToF16(data); return new Uint8Array(u.buffer, u.byteOffset, u.byteLength) }
    case 'bf16': { const u = f32ToBf16(data); return new Uint8Array(u.buffer, u.byteOffset, u.byteLength) }
  }
}

export function decodeTensor (bytes: Uint8Array, dtype: WireDType): Float32Array {
  // Copy into an aligned buffer of our own (frames may start at any offset).
  const own = new Uint8Array(bytes.byteLength)
  own.set(bytes)
  return dtype === 'f32' ? new Float32Array(own.buffer) : toFloat32(own, dtype === 'f16' ? 'F16' : 'BF16')
}

/** Frame payload: [u8 version][u8 0][u32 BE header length][header JSON][tensor bytes]. */
export function encodeMessage (msg: SessionMessage): Uint8Array {
  let header: Record<string, unknown>
  let tensor: Uint8Array | undefined
  if (msg.type === 'step' || msg.type === 'result') {
    const { data, ...rest } = msg
    if (data.length !== msg.tokens * msg.hidden) throw new RangeError(`tensor has ${data.length} values, header says ${msg.tokens}×${msg.hidden}`)
    header = rest
    tensor = encodeTensor(data, msg.dtype)
  } else {
    header = { ...msg }
  }
  const hb = new TextEncoder().encode(JSON.stringify(header))
  const out = new Uint8Array(6 + hb.length + (tensor?.length ?? 0))
  const view = new DataView(out.buffer)
  out[0] = WIRE_VERSION
  view.setUint32(2, hb.length)
  out.set(hb, 6)
  if (tensor != null) out.set(tensor, 6 + hb.length)
  return out
}

export interface DecodeLimits {
  /** Expected hidden size (rejects a step of another width with `bad-tensor`). */
  hiddenSize?: number
  /** Reject non-finite activations (NaN, ±Inf) with `bad-tensor`. */
  requireFinite?: boolean
}

export function decodeMessage (frame: Uint8Array, limits: DecodeLimits = {}): SessionMessage {
  if (frame.length < 6) throw new ProtocolError('bad-frame', `frame of ${frame.length} bytes is shorter than its 6-byte preamble`)
  if (frame[0] !== WIRE_VERSION) throw new ProtocolError('bad-frame', `unsupported wire version ${frame[0]} (this node speaks ${WIRE_VERSION})`)
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength)
  const hl = view.getUint32(2)
  if (6 + hl > frame.length) throw new ProtocolError('bad-frame', `header length ${hl} exceeds the frame (${frame.length} bytes)`)
  let header: unknown
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(frame.subarray(6, 6 + hl)))
  } catch (err: any) {
    throw new ProtocolError('bad-frame', `frame header is not valid JSON (${err.message})`)
  }
  checkHeader(header)
  const rest = frame.subarray(6 + hl)
  if (header.type !== 'step' && header.type !== 'result') {
    if (rest.length !== 0) throw new ProtocolError('bad-frame', `${header.type} message carries ${rest.length} unexpected bytes`)
    return header as SessionMessage
  }
  const h = header as Omit<StepMessage, 'data'>
  if (limits.hiddenSize != null && h.hidden !== limits.hiddenSize) {
    throw new ProtocolError('bad-tensor', `hidden size ${h.hidden} does not match the model's ${limits.hiddenSize}`)
  }
  const expected = h.tokens * h.hidden * DTYPE_BYTES[h.dtype]
  if (rest.length !== expected) {
    throw new ProtocolError('bad-tensor', `tensor has ${rest.length} bytes, but ${h.tokens}×${h.hidden} ${h.dtype} needs ${expected}`)
  }
  const data = decodeTensor(rest, h.dtype)
  if (limits.requireFinite === true) {
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) throw new ProtocolError('bad-tensor', `activation ${i} (token ${Math.floor(i / h.hidden)}) is ${data[i]}: NaN and Inf are refused`)
    }
  }
  return { ...h, data }
}

/** The session protocol on the channel (serveChannel, @plexus/p2p): its messages, its error frame, its codes. */
export function sessionCodec (limits: DecodeLimits = {}): ChannelCodec<SessionMessage, ErrorCode> {
  return {
    decode: (frame) => decodeMessage(frame, limits),
    encodeError: ({ code, message }) => encodeMessage({ type: 'error', code, message }),
    isOwn: (e): e is ProtocolError => e instanceof ProtocolError,
    channelCode: (e) => e.code === 'idle-timeout' ? 'bad-request' : 'bad-frame'
  }
}

/**
 * A channel `inspect` for session frames: reads a step's header before its tensor and refuses
 * more tokens than one step may carry (too-long), so such a tensor is never buffered.
 * Anything it cannot make sense of is left to decodeMessage.
 */
export function inspectStep (maxStepTokens: () => number): (declared: number, head: Uint8Array) => number {
  return (declared, head) => {
    const P = SESSION_PREAMBLE_BYTES
    if (head.length < P) return P
    if (head[0] !== WIRE_VERSION) return 0
    const hl = new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(2)
    if (hl > MAX_SESSION_HEADER_BYTES || P + hl > declared) return 0
    if (head.length < P + hl) return P + hl
    let h: any
    try { h = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(head.subarray(P, P + hl))) } catch { return 0 }
    const max = maxStepTokens()
    if (h?.type === 'step' && Number.isSafeInteger(h.tokens) && h.tokens > max) {
      throw new ProtocolError('too-long', `step of ${h.tokens as number} tokens exceeds the limit of ${max} tokens per step`)
    }
    return 0
  }
}
