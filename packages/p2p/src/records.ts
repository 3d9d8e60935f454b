import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { schemaProblem } from './schemas.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { PlexusError } from '@plexus/runtime'

/**
 * Signed records. On the wire (UTF-8 JSON):
 *
 *   { "payload": "<JSON text: { kind, peer, issuedAt, expiresAt, ...body }>", "sig": "<base64>" }
 *
 * `sig` is the Ed25519 signature by `peer` over RECORD_SIGNING_PREFIX + payload. The payload is
 * kept as the exact signed text, so verifying never depends on how JSON is re-serialized, and
 * since an Ed25519 peer id embeds its public key, a record verifies from its own bytes alone.
 * Times are Unix milliseconds.
 */
export const RECORD_SIGNING_PREFIX = 'plexus-record/1\n'
export const DEFAULT_RECORD_TTL_MS = 5 * 60_000
export const DEFAULT_MAX_RECORD_BYTES = 64 * 1024
export const DEFAULT_MAX_CLOCK_SKEW_MS = 30_000
export const DEFAULT_MAX_RECORD_TTL_MS = 24 * 3600_000

export interface RecordPayload {
  kind: string
  peer: string
  issuedAt: number
  expiresAt: number
  [field: string]: unknown
}

export type RecordFault = 'oversized' | 'malformed' | 'kind' | 'signature' | 'peer' | 'expired' | 'future' | 'schema' | 'stale'

/** A record that must not be trusted; `fault` says why, for code that reacts differently. */
export class RecordError extends PlexusError {
  readonly fault: RecordFault
  constructor (fault: RecordFault, message: string) {
    super('record', message)
    this.name = 'RecordError'
    this.fault = fault
  }
}

export interface SignRecordOptions {
  /** Lifetime; default 5 minutes. */
  ttlMs?: number
  /** Clock override (ms), for tests. */
  now?: number
}

const RESERVED = ['kind', 'peer', 'issuedAt', 'expiresAt']
const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { fatal: true })

export async function signRecord (privateKey: PrivateKey, kind: string, body: object, opts: SignRecordOptions = {}): Promise<Uint8Array> {
  if (!/^[a-z][a-z0-9-]{0,63}$/.test(kind)) throw new Error(`bad record kind "${kind}" (lowercase letters, digits, '-')`)
  if (privateKey.type !== 'Ed25519') throw new Error(`records must be signed with an Ed25519 key, not ${privateKey.type}`)
  for (const k of RESERVED) if (k in body) throw new Error(`record body must not set "${k}" (filled in by signRecord)`)
  const now = opts.now ?? Date.now()
  const ttlMs = opts.ttlMs ?? DEFAULT_RECORD_TTL_MS
  if (!(ttlMs > 0)) throw new Error(`record ttlMs must be > 0, got ${ttlMs}`)
  const payload = JSON.stringify({
    kind,
    peer: peerIdFromPrivateKey(privateKey).toString(),
    issuedAt: Math.floor(now),
    expiresAt: Math.floor(now + ttlMs),
    ...body
  })
  const sig = sign(null, enc.encode(RECORD_SIGNING_PREFIX + payload), signingKey(privateKey))
  return enc.encode(JSON.stringify({ payload, sig: sig.toString('base64') }))
}

export interface VerifyRecordOptions {
  kind: string
  /** Schema id (see schemas.ts) the payload must match. */
  schema?: string
  /** The peer the record came from; a record signed by anyone else is refused. */
  expectedPeer?: string | PeerId
  /** Clock override (ms). */
  now?: number
  /** Default 64 KiB. */
  maxBytes?: number
  /** Tolerated clock difference between signer and verifier; default 30 s. */
  maxClockSkewMs?: number
  /** Longest lifetime accepted (expiresAt - issuedAt); default 24 h. */
  maxTtlMs?: number
}

/** Checks a record completely and returns its payload, or throws a RecordError saying why not. */
export function verifyRecord<T extends RecordPayload = RecordPayload> (bytes: Uint8Array, opts: VerifyRecordOptions): T {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_RECORD_BYTES
  if (bytes.byteLength > maxBytes) throw new RecordError('oversized', `record is ${bytes.byteLength} bytes, over the ${maxBytes}-byte limit`)

  let envelope: unknown
  try {
    envelope = JSON.parse(dec.decode(bytes))
  } catch (err) {
    throw new RecordError('malformed', `record is not valid JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(envelope) || typeof envelope.payload !== 'string' || typeof envelope.sig !== 'string' || Object.keys(envelope).length !== 2) {
    throw new RecordError('malformed', 'record is not a {"payload": string, "sig": string} object')
  }
  const { payload: text, sig } = envelope as { payload: string, sig: string }

  let payload: unknown
  try {
    payload = JSON.parse(text)
  } catch (err) {
    throw new RecordError('malformed', `record payload is not valid JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(payload)) throw new RecordError('malformed', 'record payload is not a JSON object')
  if (payload.kind !== opts.kind) throw new RecordError('kind', `record kind is ${JSON.stringify(payload.kind)}, expected "${opts.kind}"`)
  if (!Number.isSafeInteger(payload.issuedAt) || !Number.isSafeInteger(payload.expiresAt)) {
    throw new RecordError('malformed', 'record issuedAt/expiresAt are not integer milliseconds')
  }

  // signature: by the peer the payload names
  const { signer, publicKey } = verifyingKey(payload.peer)
  if (!/^[A-Za-z0-9+/]{86}==$/.test(sig)) throw new RecordError('signature', 'record signature is not a base64 Ed25519 signature')
  if (!verify(null, enc.encode(RECORD_SIGNING_PREFIX + text), publicKey, Buffer.from(sig, 'base64'))) {
    throw new RecordError('signature', `record signature does not verify for its peer ${signer.toString()} (forged or altered)`)
  }
  if (opts.expectedPeer != null && signer.toString() !== opts.expectedPeer.toString()) {
    throw new RecordError('peer', `record is signed by ${signer.toString()} but came from ${opts.expectedPeer.toString()}`)
  }

  const now = opts.now ?? Date.now()
  const skew = opts.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS
  const maxTtl = opts.maxTtlMs ?? DEFAULT_MAX_RECORD_TTL_MS
  const issuedAt = payload.issuedAt as number
  const expiresAt = payload.expiresAt as number
  if (expiresAt <= issuedAt) throw new RecordError('malformed', 'record expiresAt is not after its issuedAt')
  if (expiresAt - issuedAt > maxTtl) throw new RecordError('malformed', `record lifetime ${seconds(expiresAt - issuedAt)} exceeds the ${seconds(maxTtl)} maximum`)
  if (now - skew > expiresAt) throw new RecordError('expired', `record expired ${seconds(now - expiresAt)} ago (at ${new Date(expiresAt).toISOString()})`)
  if (issuedAt - skew > now) throw new RecordError('future', `record issued ${seconds(issuedAt - now)} in the future (clocks more than ${seconds(skew)} apart?)`)

  if (opts.schema != null) {
    const problem = schemaProblem(opts.schema, payload)
    if (problem != null) throw new RecordError('schema', `record payload ${problem}`)
  }
  return payload as T
}

// DER header of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow. Verifying with
// node:crypto directly keeps verifyRecord synchronous.
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

// Key objects are cached: building one costs as much as the signature itself, and a server
// signs (and a client verifies) a commitment on every step.
const signingKeys = new WeakMap<PrivateKey, KeyObject>()
const verifyingKeys = new Map<string, { signer: PeerId, publicKey: KeyObject }>()
const MAX_VERIFYING_KEYS = 1024

function signingKey (privateKey: PrivateKey): KeyObject {
  let key = signingKeys.get(privateKey)
  if (key == null) {
    // libp2p's Ed25519 raw private key is seed ‖ public key; PKCS#8 wants the seed
    key = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, privateKey.raw.subarray(0, 32)]), format: 'der', type: 'pkcs8' })
    signingKeys.set(privateKey, key)
  }
  return key
}

function verifyingKey (peer: unknown): { signer: PeerId, publicKey: KeyObject } {
  const cached = typeof peer === 'string' ? verifyingKeys.get(peer) : undefined
  if (cached != null) return cached
  const signer = ed25519PeerId(peer)
  const entry = { signer, publicKey: createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, signer.publicKey.raw]), format: 'der', type: 'spki' }) }
  if (verifyingKeys.size >= MAX_VERIFYING_KEYS) verifyingKeys.delete(verifyingKeys.keys().next().value!)
  verifyingKeys.set(peer as string, entry)
  return entry
}

function ed25519PeerId (value: unknown): PeerId & { publicKey: { raw: Uint8Array } } {
  let id: PeerId | undefined
  try {
    if (typeof value === 'string') id = peerIdFromString(value)
  } catch {}
  if (id?.type !== 'Ed25519' || id.publicKey == null) {
    throw new RecordError('malformed', `record peer ${JSON.stringify(value)} is not an Ed25519 peer id`)
  }
  return id as PeerId & { publicKey: { raw: Uint8Array } }
}

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function seconds (ms: number): string {
  const s = ms / 1000
  if (s >= 7200) return `${Math.round(s / 3600)} h`
  return s >= 10 ? `${Math.round(s)} s` : `${s.toFixed(1)} s`
}
