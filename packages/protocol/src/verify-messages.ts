import { schemaProblem } from '@plexus/p2p'
import type { ChannelCodec } from '@plexus/p2p'

export type VerifyErrorCode = 'bad-frame' | 'bad-request' | 'bad-commitment' | 'not-served' | 'unknown-server' | 'busy' | 'unknown-session' | 'internal'

export interface CheckMessage {
  type: 'check'
  verifyId: string
  server: string
  modelId: string
  start: number
  end: number
  sessionId: string
  hidden: number
  /** Longest the hop's session may grow (positions). */
  maxLength: number
  /** The server's signed commitments of the steps checked, consecutive. */
  commitments: string[]
  /** The steps' inputs, then their outputs (the payload). */
  inputs: Float32Array
  outputs: Float32Array
}
export interface VerdictMessage { type: 'verdict', verifyId: string, ok: boolean, length: number, maxError: number, tolerance: number, badStep?: number, report?: string }
export interface RecheckMessage { type: 'recheck', report: Uint8Array }
export interface RecheckedMessage { type: 'rechecked', confirmed: boolean, error: number, reason: string }
export interface VerifyCloseMessage { type: 'close', verifyId: string }
export interface VerifyErrorMessage { type: 'error', code: VerifyErrorCode, message: string }
/** Asks a verifier for a fraud report its reputation records name (by BLAKE3 digest). */
export interface GetReportMessage { type: 'get-report', digest: string }
/** The report's bytes, when the verifier still keeps it. */
export interface ReportMessage { type: 'report', digest: string, found: boolean, report?: Uint8Array }
export type VerifyMessage = CheckMessage | VerdictMessage | RecheckMessage | RecheckedMessage | VerifyCloseMessage | VerifyErrorMessage | GetReportMessage | ReportMessage

export class VerifyError extends Error {
  readonly code: VerifyErrorCode
  constructor (code: VerifyErrorCode, message: string) {
    super(message)
    this.name = 'VerifyError'
    this.code = code
  }
}

/** Frame: [u32 BE header length][header JSON][payload]. */
export function encodeVerifyMessage (msg: VerifyMessage): Uint8Array {
  let header: object = msg
  let payload: Uint8Array[] = []
  if (msg.type === 'check') {
    const { inputs, outputs, ...rest } = msg
    header = rest
    payload = [bytesOf(inputs), bytesOf(outputs)]
  } else if (msg.type === 'recheck') {
    header = { type: 'recheck' }
    payload = [msg.report]
  } else if (msg.type === 'report') {
    header = { type: 'report', digest: msg.digest, found: msg.found }
    payload = msg.found && msg.report != null ? [msg.report] : []
  }
  const hb = new TextEncoder().encode(JSON.stringify(header))
  const out = new Uint8Array(4 + hb.length + payload.reduce((n, p) => n + p.length, 0))
  new DataView(out.buffer).setUint32(0, hb.length)
  out.set(hb, 4)
  let o = 4 + hb.length
  for (const p of payload) { out.set(p, o); o += p.length }
  return out
}

export function decodeVerifyMessage (frame: Uint8Array): VerifyMessage {
  if (frame.length < 4) throw new VerifyError('bad-frame', `frame of ${frame.length} bytes is shorter than its 4-byte header length`)
  const hl = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(0)
  if (4 + hl > frame.length) throw new VerifyError('bad-frame', `header length ${hl} exceeds the frame (${frame.length} bytes)`)
  let header: any
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(frame.subarray(4, 4 + hl)))
  } catch (err: any) {
    throw new VerifyError('bad-frame', `frame header is not valid JSON (${err.message})`)
  }
  if (header == null || typeof header !== 'object' || Array.isArray(header)) throw new VerifyError('bad-frame', 'frame header is not a JSON object')
  const problem = schemaProblem('verify-message', header)
  if (problem != null) throw new VerifyError('bad-frame', `invalid ${typeof header.type === 'string' ? header.type.slice(0, 40) : ''} message: ${problem}`)
  const rest = frame.subarray(4 + hl)
  if (header.type === 'recheck') return { type: 'recheck', report: rest.slice() }
  if (header.type === 'report') {
    if (header.found !== (rest.length > 0)) throw new VerifyError('bad-frame', `report message says found ${String(header.found)} but carries ${rest.length} bytes`)
    return header.found === true ? { ...header, report: rest.slice() } : header
  }
  if (header.type !== 'check') {
    if (rest.length !== 0) throw new VerifyError('bad-frame', `${header.type} message carries ${rest.length} unexpected bytes`)
    return header
  }
  if (rest.length % 8 !== 0) throw new VerifyError('bad-frame', `check payload of ${rest.length} bytes is not inputs and outputs of float32`)
  const own = new Float32Array(rest.length / 4)
  new Uint8Array(own.buffer).set(rest)
  const half = own.length / 2
  if (half % header.hidden !== 0) throw new VerifyError('bad-frame', `check tensors of ${half} values are not whole positions of ${header.hidden}`)
  return { ...header, inputs: own.subarray(0, half), outputs: own.subarray(half) }
}

function bytesOf (x: Float32Array): Uint8Array { return new Uint8Array(x.buffer, x.byteOffset, x.byteLength) }

/** The verify protocol on the channel (serveChannel, @plexus/p2p). */
export const verifyCodec: ChannelCodec<VerifyMessage, VerifyErrorCode> = {
  decode: decodeVerifyMessage,
  encodeError: ({ code, message }) => encodeVerifyMessage({ type: 'error', code, message }),
  isOwn: (e): e is VerifyError => e instanceof VerifyError,
  channelCode: (e) => e.code === 'idle-timeout' ? 'bad-request' : 'bad-frame'
}
