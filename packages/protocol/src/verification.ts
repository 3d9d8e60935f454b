import type { PrivateKey } from '@libp2p/interface'
import { signRecord, verifyRecord, RecordError } from '@plexus/p2p'
import type { RecordPayload } from '@plexus/p2p'
import { createBLAKE3 } from 'hash-wasm'
import { tensorDigest, verifyCommitment } from './commitment.ts'
import type { StepCommitment } from './commitment.ts'

export const FRAUD_REPORT_KIND = 'fraud-report'
/** Reports are evidence for as long as the commitments inside them are. */
export const FRAUD_REPORT_TTL_MS = 24 * 3600_000
/** A report carries a hop's whole input history; 64 MiB holds 2,700 positions of a 6,144-wide model. */
export const MAX_FRAUD_REPORT_BYTES = 64 << 20

/**
 * The error an honest server may show against a verifier: max |claimed − recomputed| over a
 * step's values, divided by the RMS of the recomputed output. Measured across backends (wasm
 * server vs cpu verifier, f32 and f16 wire; docs/verification.md) honest steps stay below
 * 3e-3 (f16 rounding dominates); a server perturbing its output by 1% of its RMS shows ≈ 0.04.
 */
export const DEFAULT_TOLERANCE = 0.02

/** max |claimed − expected| / RMS(expected): scale-free, so one tolerance fits every block. */
export function outputError (expected: Float32Array, claimed: Float32Array): number {
  if (expected.length !== claimed.length) return Infinity
  let ss = 0
  let worst = 0
  for (let i = 0; i < expected.length; i++) {
    ss += expected[i] * expected[i]
    const d = Math.abs(claimed[i] - expected[i])
    // NaN in a claimed output is as wrong as it gets
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d
  }
  const rms = Math.sqrt(ss / Math.max(1, expected.length))
  return worst / Math.max(rms, 1e-6)
}

export interface FraudReportBody {
  server: string
  modelId: string
  start: number
  end: number
  sessionId: string
  hidden: number
  badStep: number
  error: number
  tolerance: number
  commitments: string[]
  inputs: string[]
  output: string
}
export type FraudReport = RecordPayload & FraudReportBody & { kind: typeof FRAUD_REPORT_KIND }

export function f32ToBase64 (x: Float32Array): string { return Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64') }
export function base64ToF32 (s: string): Float32Array {
  const b = Buffer.from(s, 'base64')
  if (b.byteLength % 4 !== 0) throw new RecordError('schema', `a tensor of ${b.byteLength} bytes is not float32`)
  const own = new Uint8Array(b.byteLength)
  own.set(b)
  return new Float32Array(own.buffer)
}

export async function signFraudReport (privateKey: PrivateKey, body: FraudReportBody): Promise<Uint8Array> {
  return await signRecord(privateKey, FRAUD_REPORT_KIND, body, { ttlMs: FRAUD_REPORT_TTL_MS })
}

/** What a fraud report holds once its signatures and digests are checked. */
export interface CheckedFraudReport {
  report: FraudReport
  commitments: StepCommitment[]
  inputs: Float32Array[]
  output: Float32Array
  /** Positions the hop had consumed after the bad step. */
  length: number
}

/**
 * Checks everything in a fraud report except the recomputation itself: the verifier's signature,
 * the accused server's signature on every commitment, that the commitments are one session's
 * steps 0..badStep at consecutive positions, and that the inputs and the output are the ones the
 * server committed to. A report that passes binds the server to its output; whether that output
 * is wrong is for the re-checker's own blocks to say.
 */
export async function verifyFraudReport (bytes: Uint8Array, opts: { now?: number } = {}): Promise<CheckedFraudReport> {
  const report = verifyRecord<FraudReport>(bytes, { kind: FRAUD_REPORT_KIND, schema: 'fraud-report', maxBytes: MAX_FRAUD_REPORT_BYTES, now: opts.now })
  if (!(report.start < report.end)) throw new RecordError('schema', `fraud report span [${report.start}, ${report.end}) is empty`)
  if (report.commitments.length !== report.badStep + 1) throw new RecordError('schema', `fraud report has ${report.commitments.length} commitments for steps 0..${report.badStep}`)
  if (report.inputs.length !== report.commitments.length) throw new RecordError('schema', `fraud report has ${report.inputs.length} inputs for ${report.commitments.length} commitments`)
  const commitments: StepCommitment[] = []
  const inputs: Float32Array[] = []
  let position = 0
  for (let step = 0; step <= report.badStep; step++) {
    const input = base64ToF32(report.inputs[step])
    const c = verifyCommitment(report.commitments[step], {
      expectedPeer: report.server,
      // signatures outlive the server's own 24 h commitment lifetime only as long as the report
      now: opts.now,
      expected: { modelId: report.modelId, start: report.start, end: report.end, sessionId: report.sessionId, step, position }
    })
    if (input.length !== c.tokens * report.hidden) throw new RecordError('schema', `fraud report input of step ${step} has ${input.length} values, its commitment says ${c.tokens}×${report.hidden}`)
    if (await tensorDigest(input) !== c.inputDigest) throw new RecordError('schema', `fraud report input of step ${step} is not the one the server committed to`)
    commitments.push(c)
    inputs.push(input)
    position += c.tokens
  }
  const output = base64ToF32(report.output)
  const last = commitments[commitments.length - 1]
  if (output.length !== last.tokens * report.hidden) throw new RecordError('schema', `fraud report output has ${output.length} values, the bad step has ${last.tokens}×${report.hidden}`)
  if (await tensorDigest(output) !== last.outputDigest) throw new RecordError('schema', 'fraud report output is not the one the server committed to')
  return { report, commitments, inputs, output, length: position }
}

const hasher = createBLAKE3()
/** BLAKE3 (hex) of a fraud report's bytes: how reputation records and re-check caches name it. */
export async function reportDigest (bytes: Uint8Array): Promise<string> {
  const h = await hasher
  h.init()
  h.update(bytes)
  return h.digest('hex')
}
