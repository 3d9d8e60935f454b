import { randomBytes } from 'node:crypto'
import { verifyFraudReport } from '@plexus/protocol'
import { concatFloat32, TrustError } from '@plexus/runtime'
import type { Dialer } from './remote-span.ts'
import { PeerFailure } from './remote-span.ts'
import { VerifyClient } from './verify-client.ts'
import type { BanList } from '../routing/ban-list.ts'
import { describeBlocks } from '../routing/route.ts'
import { componentLog } from '@plexus/p2p'

const log = componentLog('client', 'auditor')

export interface VerifierCandidate { peer: string, start: number, end: number }

/** Where verifiers come from: discovery on the swarm (or a fixed list). */
export interface VerifierSource {
  verifiers (opts?: { refresh?: boolean }): Promise<VerifierCandidate[]>
  target (peer: string): unknown
}

export interface AuditorComponents {
  dialer: Dialer
  verifiers: VerifierSource
  bans: BanList
}

export interface AuditorInit {
  modelId: string
  modelName: string
  hiddenSize: number
  maxLength: number
  /** Fraction of hops whose every step a verifier re-computes. */
  checkRate: number
  /** Steps between checks of a checked hop (the final step is always checked). Default 8. */
  checkEvery?: number
  /** Verifiers whose word alone is enough to ban a server for good. */
  trustedVerifiers?: Set<string>
  random?: () => number
  onEvent?: (e: AuditEvent) => void
}

export type AuditEvent =
  | { kind: 'checked', server: string, verifier: string, steps: number, maxError: number }
  | { kind: 'fraud', server: string, verifier: string, badStep: number, error: number, confirmedBy: string[], report: Uint8Array }

interface Step { commitment: string, input: Float32Array, output: Float32Array, tokens: number }

/** One hop's steps as its server committed to them, and how far a verifier has confirmed them. */
export class HopAudit {
  readonly server: string
  readonly sessionId: string
  readonly start: number
  readonly end: number
  /** Drawn once per hop: a checked hop has every step re-computed. */
  readonly checked: boolean
  /** Every step (a new verifier needs them all), and how many have been confirmed. */
  readonly steps: Step[] = []
  confirmedSteps = 0
  /** Positions consumed, and positions confirmed. */
  length = 0
  verifiedLength = 0
  verifyId = randomBytes(16).toString('hex')
  client?: VerifyClient

  constructor (init: { server: string, sessionId: string, start: number, end: number, checked: boolean }) {
    this.server = init.server
    this.sessionId = init.sessionId
    this.start = init.start
    this.end = init.end
    this.checked = init.checked
  }

  record (step: { commitment: string, input: Float32Array, output: Float32Array }, tokens: number): void {
    if (!this.checked) { this.length += tokens; this.verifiedLength = this.length; return }
    this.steps.push({ ...step, tokens })
    this.length += tokens
  }

  get pending (): number { return this.steps.length - this.confirmedSteps }

  async dispose (): Promise<void> { await this.client?.close(); this.client = undefined }
}

export type SyncResult = { ok: true } | { ok: false, rollbackTo: number, server: string }

/**
 * Spot checks of one inference session: for each checked hop, sends the steps since the last
 * check (inputs, outputs, the server's signed commitments) to a verifier holding those blocks.
 * A mismatch comes back as a signed fraud report; the caller rolls the session back to the last
 * confirmed position and reroutes without the cheater.
 */
export class Auditor {
  private readonly c: AuditorComponents
  readonly init: AuditorInit
  private readonly random: () => number
  private stepsSinceCheck = 0

  constructor (components: AuditorComponents, init: AuditorInit) {
    if (!(init.checkRate >= 0 && init.checkRate <= 1)) throw new RangeError(`check rate must be in [0, 1] (got ${init.checkRate})`)
    this.c = components
    this.init = init
    this.random = init.random ?? Math.random
  }

  newHop (server: string, sessionId: string, start: number, end: number): HopAudit {
    return new HopAudit({ server, sessionId, start, end, checked: this.init.checkRate > 0 && this.random() < this.init.checkRate })
  }

  /** True when the steps so far should be checked now. */
  due (final: boolean): boolean {
    this.stepsSinceCheck++
    return final || this.stepsSinceCheck >= (this.init.checkEvery ?? 8)
  }

  /** Checks every pending step of `hops`; on a mismatch says where to roll back to. */
  async sync (hops: HopAudit[]): Promise<SyncResult> {
    this.stepsSinceCheck = 0
    const results = await Promise.all(hops.filter(h => h.checked && h.pending > 0).map(async h => await this.checkHop(h)))
    const bad = results.find(r => r != null)
    if (bad == null) return { ok: true }
    // everything before the earliest unconfirmed position of any checked hop is known good
    const rollbackTo = Math.min(...hops.filter(h => h.checked).map(h => h.verifiedLength))
    return { ok: false, rollbackTo, server: bad.server }
  }

  /** Positions every checked hop has confirmed. */
  verifiedLength (hops: HopAudit[], length: number): number {
    return Math.min(length, ...hops.filter(h => h.checked).map(h => h.verifiedLength))
  }

  private async checkHop (h: HopAudit): Promise<{ server: string } | undefined> {
    const tried = new Set<string>()
    for (;;) {
      if (h.client == null) {
        const v = await this.pickVerifier(h, tried)
        tried.add(v.peer)
        try {
          h.client = await VerifyClient.open(this.c.dialer, v.peer, this.c.verifiers.target(v.peer))
        } catch (err: any) {
          log.info(`verifier ${v.peer.slice(-8)}: ${err.message}`)
          continue
        }
        // a fresh verifier starts from the hop's first step
        h.verifyId = randomBytes(16).toString('hex')
        h.confirmedSteps = 0
      }
      const batch = h.steps.slice(h.confirmedSteps)
      try {
        const verdict = await h.client.check({
          verifyId: h.verifyId,
          server: h.server,
          modelId: this.init.modelId,
          start: h.start,
          end: h.end,
          sessionId: h.sessionId,
          hidden: this.init.hiddenSize,
          maxLength: this.init.maxLength,
          commitments: batch.map(s => s.commitment),
          inputs: concatFloat32(batch.map(s => s.input)),
          outputs: concatFloat32(batch.map(s => s.output))
        })
        if (verdict.ok) {
          h.confirmedSteps = h.steps.length
          h.verifiedLength = verdict.length
          this.init.onEvent?.({ kind: 'checked', server: h.server, verifier: h.client.peer, steps: batch.length, maxError: verdict.maxError })
          return undefined
        }
        h.verifiedLength = verdict.length
        await this.onFraud(h, h.client.peer, verdict.report, verdict.badStep ?? -1, verdict.maxError)
        await h.dispose()
        return { server: h.server }
      } catch (err: any) {
        if (!(err instanceof PeerFailure)) throw err
        // the verifier failed, not the server: ask another one, from the hop's first step
        log.info(`verifier ${h.client.peer.slice(-8)} failed: ${err.message}`)
        await h.dispose()
      }
    }
  }

  private async pickVerifier (h: HopAudit, tried: Set<string>): Promise<VerifierCandidate> {
    for (const refresh of [false, true]) {
      const all = (await this.c.verifiers.verifiers({ refresh })).filter(v => v.start <= h.start && v.end >= h.end && v.peer !== h.server && !tried.has(v.peer) && !this.c.bans.isBanned(v.peer))
      if (all.length > 0) return all[Math.floor(this.random() * all.length)]
    }
    throw new TrustError('trust-unavailable', `no verifier can check ${describeBlocks([h.start, h.end])} of ${this.init.modelName}${tried.size > 0 ? ` (${tried.size} failed)` : ''}: verified needs a verifier peer holding those blocks (plexus-node join --verify), or use --trust fast`)
  }

  /**
   * A verifier says `server` lied. The report must hold (our own check of its signatures and
   * digests); a second verifier re-checks it when there is one. Either way this client stops
   * using the server; for good when the verifier is trusted or the re-check confirms it.
   */
  private async onFraud (h: HopAudit, verifier: string, report: string | undefined, badStep: number, error: number): Promise<void> {
    const bytes = new TextEncoder().encode(report ?? '')
    try {
      await verifyFraudReport(bytes)
    } catch (err: any) {
      // a verifier that cries fraud without evidence is the one not to trust
      log.info(`verifier ${verifier.slice(-8)} reported ${h.server.slice(-8)} without a valid report (${err.message}); not using that verifier`)
      this.c.bans.fail(verifier, 'fraud')
      throw new PeerFailure(verifier, 'sent an invalid fraud report')
    }
    const confirmedBy = [verifier]
    const others = (await this.c.verifiers.verifiers()).filter(v => v.peer !== verifier && v.peer !== h.server && v.start <= h.start && v.end >= h.end)
    // a trusted verifier's re-check first; the next one when a verifier does not answer (announcing is free)
    others.sort((a, b) => Number(this.init.trustedVerifiers?.has(b.peer) === true) - Number(this.init.trustedVerifiers?.has(a.peer) === true))
    for (const other of others.slice(0, 3)) {
      try {
        const client = await VerifyClient.open(this.c.dialer, other.peer, this.c.verifiers.target(other.peer))
        try {
          const r = await client.recheck(bytes)
          if (r.confirmed) confirmedBy.push(other.peer)
          log.info(`verifier ${other.peer.slice(-8)} re-checked the report: ${r.reason}`)
        } finally { await client.close() }
        break
      } catch (err: any) {
        log.info(`re-check by ${other.peer.slice(-8)} failed: ${err.message}`)
      }
    }
    const trusted = confirmedBy.length >= 2 || this.init.trustedVerifiers?.has(verifier) === true
    this.c.bans.fail(h.server, trusted ? 'fraud' : 'failure')
    log.info(`server ${h.server.slice(-8)} gave a wrong output at step ${badStep} of ${describeBlocks([h.start, h.end])} (error ${error.toExponential(2)}, reported by ${confirmedBy.map(p => p.slice(-8)).join(', ')}); rolling back`)
    this.init.onEvent?.({ kind: 'fraud', server: h.server, verifier, badStep, error, confirmedBy, report: bytes })
  }
}

