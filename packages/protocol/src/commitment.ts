import type { PrivateKey, PeerId } from '@libp2p/interface'
import { createBLAKE3 } from 'hash-wasm'
import { signRecord, verifyRecord, RecordError } from '@plexus/p2p'
import type { RecordPayload } from '@plexus/p2p'

export const COMMITMENT_KIND = 'step-commitment'
/** Commitments are evidence: they stay verifiable for a day. */
export const COMMITMENT_TTL_MS = 24 * 3600_000

/** What a server says it computed in one step. */
export interface StepCommitmentBody {
  modelId: string
  start: number
  end: number
  sessionId: string
  step: number
  position: number
  tokens: number
  /** BLAKE3 of the input's float32 values (as the server decoded them). */
  inputDigest: string
  /** BLAKE3 of the output's float32 values as the client decodes them (after the wire dtype). */
  outputDigest: string
}
export type StepCommitment = RecordPayload & StepCommitmentBody & { kind: typeof COMMITMENT_KIND }

const hasher = createBLAKE3()

/** BLAKE3 (hex) of float32 values, little-endian. */
export async function tensorDigest (data: Float32Array): Promise<string> {
  const h = await hasher
  h.init()
  h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
  return h.digest('hex')
}

export async function signCommitment (privateKey: PrivateKey, body: StepCommitmentBody): Promise<string> {
  return new TextDecoder().decode(await signRecord(privateKey, COMMITMENT_KIND, body, { ttlMs: COMMITMENT_TTL_MS }))
}

/**
 * A commitment signed by `expectedPeer` that states exactly `expected` (so a server cannot
 * attach another step's, another session's or another peer's commitment).
 */
export function verifyCommitment (text: string, opts: { expectedPeer: string | PeerId, expected: Partial<StepCommitmentBody>, now?: number }): StepCommitment {
  const c = verifyRecord<StepCommitment>(new TextEncoder().encode(text), { kind: COMMITMENT_KIND, schema: 'step-commitment', expectedPeer: opts.expectedPeer, now: opts.now })
  for (const [k, v] of Object.entries(opts.expected)) {
    if ((c as any)[k] !== v) throw new RecordError('schema', `commitment states ${k} ${JSON.stringify((c as any)[k])}, but the step had ${JSON.stringify(v)}`)
  }
  return c
}
