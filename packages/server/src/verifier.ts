import type { Logger, PrivateKey } from '@libp2p/interface'
import { DEFAULT_TOLERANCE, VerifyError, reportDigest, f32ToBase64, outputError, signFraudReport, tensorDigest, verifyCommitment, verifyFraudReport } from '@plexus/protocol'
import type { CheckMessage, VerdictMessage, RecheckedMessage, StepCommitment } from '@plexus/protocol'
import { concatFloat32 } from '@plexus/runtime'
import type { ModelConfig, SpanRunner, SpanSession } from '@plexus/runtime'
import type { ServerDirectory } from './announced-servers.ts'

export interface VerifierComponents {
  /** Blocks this verifier recomputes; any hop inside them can be checked. */
  runner: SpanRunner
  config: ModelConfig
  /** Signs fraud reports. */
  privateKey: PrivateKey
  log: Logger
}

export interface VerifierInit {
  modelId: string
  /** Largest honest error (outputError) accepted. Default DEFAULT_TOLERANCE. */
  tolerance?: number
  maxSessions?: number
  /** A verify session unused this long is dropped. Default 5 min. */
  idleTimeoutMs?: number
  /** Longest session a check may announce (positions). Default: the model's context. */
  maxLength?: number
  /** Called whenever a server's tally changes (to publish its reputation). */
  onTally?: (server: string, tally: Tally) => void
  /**
   * Who serves what: checks and re-checks are refused for a peer that does not announce the
   * model and the span (absent: every peer is taken at its word, for tests of the verifier alone).
   */
  servers?: ServerDirectory
  /** Re-checks computed at once (default 2) and waiting for a turn (default 8); more are refused busy. */
  maxRechecks?: number
  maxQueuedRechecks?: number
  /** Servers whose tallies are kept (default 4,096; the least recently changed is forgotten first). */
  maxServers?: number
}

/** What this verifier has seen of one server. */
export interface Tally {
  /** Steps that matched. */
  passed: number
  /** Steps found wrong (own checks and confirmed re-checks). */
  failed: number
  /** BLAKE3 digests of the fraud reports against it (newest last). */
  reports: string[]
}

interface VerifySession {
  id: string
  server: string
  start: number
  end: number
  sessionId: string
  maxLength: number
  span: SpanSession
  /** Next step expected, and positions consumed. */
  step: number
  length: number
  /** Every step's input and commitment so far: the evidence a fraud report needs. */
  inputs: Float32Array[]
  commitments: string[]
  lastUsed: number
}

interface Step { c: StepCommitment, text: string, input: Float32Array, output: Float32Array }

const MAX_REPORTS_KEPT = 256
/** Re-check answers kept by report digest (a report re-checked again costs nothing). */
const MAX_RECHECKS_KEPT = 256

/**
 * Re-computes the steps a client sends (each bound to the server by its signed commitment) and
 * compares. A verify session follows one hop of one inference session, so a check of later
 * steps costs only those steps: the verifier's own KV cache holds the earlier positions.
 */
export class Verifier {
  readonly modelId: string
  readonly tolerance: number
  private readonly c: VerifierComponents
  private readonly init: VerifierInit
  private readonly sessions = new Map<string, VerifySession>()
  private readonly tallies = new Map<string, Tally>()
  /** Fraud reports by digest, for anyone who wants to re-check them. */
  readonly reports = new Map<string, Uint8Array>()
  private readonly sweeper: NodeJS.Timeout
  /** Re-check answers (and re-checks in progress) by report digest. */
  private readonly rechecks = new Map<string, Promise<RecheckedMessage>>()
  /** Re-checks admitted (decoding, waiting or computing), and those computing. */
  private admitted = 0
  private rechecking = 0
  private readonly recheckQueue: Array<() => void> = []

  constructor (components: VerifierComponents, init: VerifierInit) {
    this.c = components
    this.init = init
    this.modelId = init.modelId
    this.tolerance = init.tolerance ?? DEFAULT_TOLERANCE
    const idle = init.idleTimeoutMs ?? 5 * 60_000
    this.sweeper = setInterval(() => {
      for (const s of this.sessions.values()) if (Date.now() - s.lastUsed > idle) void this.close(s.id)
    }, Math.min(10_000, idle)).unref()
  }

  get start (): number { return this.c.runner.start }
  get end (): number { return this.c.runner.end }
  get sessionCount (): number { return this.sessions.size }
  has (verifyId: string): boolean { return this.sessions.has(verifyId) }
  tally (server: string): Tally { return this.tallies.get(server) ?? { passed: 0, failed: 0, reports: [] } }
  allTallies (): Map<string, Tally> { return new Map(this.tallies) }

  /** Checks the next steps of a hop; a mismatch ends the verify session with a signed report. */
  async check (msg: CheckMessage): Promise<VerdictMessage> {
    this.covers(msg.modelId, msg.start, msg.end)
    if (msg.hidden !== this.c.config.hiddenSize) throw new VerifyError('bad-request', `hidden size ${msg.hidden} does not match the model's ${this.c.config.hiddenSize}`)
    let s = this.sessions.get(msg.verifyId)
    if (s == null) {
      await this.requireServer(msg.server, msg.modelId, msg.start, msg.end)
      s = this.sessions.get(msg.verifyId) ?? await this.openSession(msg)
    }
    else if (s.server !== msg.server || s.sessionId !== msg.sessionId || s.start !== msg.start || s.end !== msg.end) {
      throw new VerifyError('bad-request', `verify session ${msg.verifyId} follows another hop`)
    }
    s.lastUsed = Date.now()
    // every step must be the server's own signed word about exactly these tensors
    const hidden = msg.hidden
    const steps: Step[] = []
    let offset = 0
    let position = s.length
    for (const [i, text] of msg.commitments.entries()) {
      let c: StepCommitment
      try {
        c = verifyCommitment(text, { expectedPeer: msg.server, expected: { modelId: msg.modelId, start: msg.start, end: msg.end, sessionId: msg.sessionId, step: s.step + i, position } })
      } catch (err: any) {
        throw new VerifyError('bad-commitment', `step ${s.step + i}: ${err.message}`)
      }
      const n = c.tokens * hidden
      if (offset + n > msg.inputs.length) throw new VerifyError('bad-request', `the check carries ${msg.inputs.length / hidden} positions, its commitments ${position - s.length + c.tokens}+`)
      const input = msg.inputs.subarray(offset, offset + n)
      const output = msg.outputs.subarray(offset, offset + n)
      if (await tensorDigest(input) !== c.inputDigest) throw new VerifyError('bad-commitment', `step ${c.step}: the input is not the one the server committed to`)
      if (await tensorDigest(output) !== c.outputDigest) throw new VerifyError('bad-commitment', `step ${c.step}: the output is not the one the server committed to`)
      steps.push({ c, text, input, output })
      offset += n
      position += c.tokens
    }
    if (offset !== msg.inputs.length) throw new VerifyError('bad-request', `the check carries ${msg.inputs.length / hidden} positions, its commitments ${offset / hidden}`)
    if (position > s.maxLength) {
      throw new VerifyError('bad-request', `the check runs to position ${position}, past the session's ${s.maxLength}`)
    }

    // all steps of the check in one call: the verifier's cost is a prefill, not N decodes
    const expected = await s.span.forward(msg.inputs.slice(), offset / hidden)
    let maxError = 0
    let o = 0
    for (const [i, st] of steps.entries()) {
      const n = st.c.tokens * hidden
      const error = outputError(expected.subarray(o, o + n), st.output)
      o += n
      if (error > this.tolerance) return await this.convict(s, steps.slice(0, i + 1), error)
      maxError = Math.max(maxError, error)
    }
    for (const st of steps) { s.inputs.push(st.input.slice()); s.commitments.push(st.text) }
    s.step += steps.length
    s.length = position
    this.count(s.server, t => { t.passed += steps.length })
    return { type: 'verdict', verifyId: s.id, ok: true, length: s.length, maxError, tolerance: this.tolerance }
  }

  /**
   * Re-runs a fraud report (from any verifier) on our blocks: does its output really differ?
   * The answer is kept by the report's digest, and asking again while it runs shares the run;
   * at most maxRechecks run at once, each counted against maxSessions. `peerSlot` takes the
   * asking peer's turn (its per-peer limit, verify-handler.ts) only for a new computation: a
   * kept or shared answer costs nothing.
   */
  async recheck (bytes: Uint8Array, peerSlot?: () => () => void): Promise<RecheckedMessage> {
    const digest = await reportDigest(bytes)
    const known = this.rechecks.get(digest)
    if (known != null) return await known
    const leave = peerSlot?.()
    try { return await this.recheckNew(digest, bytes) } finally { leave?.() }
  }

  private async recheckNew (digest: string, bytes: Uint8Array): Promise<RecheckedMessage> {
    // admitted before the report is even decoded: decoding a large report costs memory too
    const limit = this.init.maxRechecks ?? 2
    if (this.admitted >= limit + (this.init.maxQueuedRechecks ?? 8)) {
      throw new VerifyError('busy', `busy: ${this.rechecking} re-checks running and ${this.admitted - this.rechecking} waiting`)
    }
    this.admitted++
    const run = this.recheckOnce(digest, bytes).finally(() => { this.admitted-- })
    this.rechecks.set(digest, run)
    while (this.rechecks.size > MAX_RECHECKS_KEPT) this.rechecks.delete(this.rechecks.keys().next().value!)
    // a refusal (busy, not served, unknown server) may not hold next time: not kept
    run.catch(() => { if (this.rechecks.get(digest) === run) this.rechecks.delete(digest) })
    return await run
  }

  private async recheckOnce (digest: string, bytes: Uint8Array): Promise<RecheckedMessage> {
    let checked
    try {
      checked = await verifyFraudReport(bytes)
    } catch (err: any) {
      return { type: 'rechecked', confirmed: false, error: 0, reason: `the report does not hold: ${err.message}` }
    }
    const { report, inputs, output, length } = checked
    this.covers(report.modelId, report.start, report.end)
    if (report.hidden !== this.c.config.hiddenSize) return { type: 'rechecked', confirmed: false, error: 0, reason: `hidden size ${report.hidden} is not the model's` }
    await this.requireServer(report.server, report.modelId, report.start, report.end)
    const release = await this.recheckSlot()
    let error: number
    try {
      const max = this.init.maxSessions ?? 64
      if (this.sessions.size + this.rechecking > max) throw new VerifyError('busy', `busy: ${this.sessions.size} verify sessions and ${this.rechecking - 1} re-checks open`)
      const span = await this.c.runner.open(length, report.start, report.end)
      try {
        const all = concatFloat32(inputs)
        const out = await span.forward(all, length)
        error = outputError(out.subarray(out.length - output.length), output)
      } finally {
        await span.close()
      }
    } finally {
      release()
    }
    if (!(error > this.tolerance)) {
      return { type: 'rechecked', confirmed: false, error, reason: `the output is within the tolerance here (error ${error.toExponential(2)} ≤ ${this.tolerance})` }
    }
    this.keepReport(digest, bytes)
    this.count(report.server, t => { if (!t.reports.includes(digest)) { t.failed++; t.reports.push(digest) } })
    return { type: 'rechecked', confirmed: true, error, reason: `recomputed: error ${error.toExponential(2)} > tolerance ${this.tolerance}` }
  }

  /** A turn to re-compute; the caller holds the count of running re-checks until it releases. */
  private async recheckSlot (): Promise<() => void> {
    if (this.rechecking >= (this.init.maxRechecks ?? 2)) await new Promise<void>(resolve => { this.recheckQueue.push(resolve) })
    this.rechecking++
    return () => { this.rechecking--; this.recheckQueue.shift()?.() }
  }

  private async requireServer (server: string, modelId: string, start: number, end: number): Promise<void> {
    if (this.init.servers == null || await this.init.servers.announces(server, modelId, start, end)) return
    throw new VerifyError('unknown-server', `peer ${server} does not announce blocks [${start}, ${end}) of model ${modelId.slice(0, 12)}: only servers' commitments are checked`)
  }

  async close (verifyId: string): Promise<void> {
    const s = this.sessions.get(verifyId)
    if (s == null) return
    this.sessions.delete(verifyId)
    await s.span.close()
  }

  async dispose (): Promise<void> {
    clearInterval(this.sweeper)
    for (const id of [...this.sessions.keys()]) await this.close(id)
  }

  private async convict (s: VerifySession, steps: Step[], error: number): Promise<VerdictMessage> {
    const bad = steps[steps.length - 1]
    const commitments = [...s.commitments, ...steps.map(st => st.text)]
    const bytes = await signFraudReport(this.c.privateKey, {
      server: s.server,
      modelId: this.modelId,
      start: s.start,
      end: s.end,
      sessionId: s.sessionId,
      hidden: this.c.config.hiddenSize,
      badStep: bad.c.step,
      error: Number.isFinite(error) ? error : Number.MAX_VALUE,
      tolerance: this.tolerance,
      commitments,
      inputs: [...s.inputs, ...steps.map(st => st.input)].map(f32ToBase64),
      output: f32ToBase64(bad.output)
    })
    const digest = await reportDigest(bytes)
    this.keepReport(digest, bytes)
    this.count(s.server, t => { t.failed++; t.reports.push(digest) })
    this.c.log('server %s failed step %d of session %s on [%d, %d): error %s > %s', s.server, bad.c.step, s.sessionId, s.start, s.end, error, this.tolerance)
    await this.close(s.id)
    return {
      type: 'verdict', verifyId: s.id, ok: false, length: s.length, maxError: Number.isFinite(error) ? error : Number.MAX_VALUE, tolerance: this.tolerance,
      badStep: bad.c.step, report: new TextDecoder().decode(bytes)
    }
  }

  private covers (modelId: string, start: number, end: number): void {
    if (modelId !== this.modelId) throw new VerifyError('not-served', `model ${modelId.slice(0, 12)} is not verified here (this verifier holds ${this.modelId.slice(0, 12)})`)
    if (start < this.start || end > this.end || start >= end) throw new VerifyError('not-served', `blocks [${start}, ${end}) are not verified here (this verifier holds [${this.start}, ${this.end}))`)
  }

  private async openSession (msg: CheckMessage): Promise<VerifySession> {
    if (this.sessions.size >= (this.init.maxSessions ?? 64)) throw new VerifyError('busy', `busy: ${this.sessions.size} verify sessions open`)
    if (msg.maxLength > (this.init.maxLength ?? this.c.config.maxPositions)) throw new VerifyError('bad-request', `max length ${msg.maxLength} exceeds the ${this.init.maxLength ?? this.c.config.maxPositions} positions this verifier checks`)
    const span = await this.c.runner.open(msg.maxLength, msg.start, msg.end)
    const s: VerifySession = { id: msg.verifyId, server: msg.server, start: msg.start, end: msg.end, sessionId: msg.sessionId, maxLength: msg.maxLength, span, step: 0, length: 0, inputs: [], commitments: [], lastUsed: Date.now() }
    this.sessions.set(s.id, s)
    return s
  }

  private count (server: string, fn: (t: Tally) => void): void {
    const t = this.tallies.get(server) ?? { passed: 0, failed: 0, reports: [] }
    fn(t)
    if (t.reports.length > 64) t.reports.splice(0, t.reports.length - 64)
    // most recently changed last: the first one is the one to forget
    this.tallies.delete(server)
    this.tallies.set(server, t)
    while (this.tallies.size > (this.init.maxServers ?? 4096)) this.tallies.delete(this.tallies.keys().next().value!)
    this.init.onTally?.(server, t)
  }

  private keepReport (digest: string, bytes: Uint8Array): void {
    this.reports.set(digest, bytes)
    while (this.reports.size > MAX_REPORTS_KEPT) this.reports.delete(this.reports.keys().next().value!)
  }
}

export { reportDigest }
