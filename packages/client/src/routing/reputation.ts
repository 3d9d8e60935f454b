import { getReputation, componentLog } from '@plexus/p2p'
import type { PlexusNode, ReputationRecord } from '@plexus/p2p'
import { reportDigest, verifyFraudReport } from '@plexus/protocol'
import type { VerifierSource } from '../inference/auditor.ts'
import { VerifyClient } from '../inference/verify-client.ts'

/** Verifiers asked in turn to re-check one report (until one answers). */
const MAX_RECHECKERS = 4
/** How long a fraud claim that could not be proven is not asked about again. */
const NOT_COUNTED_MS = 5 * 60_000

export interface ReputationInit {
  modelId: string
  /** Verifiers whose record alone condemns a server. */
  trusted?: Set<string>
  cacheMs?: number
  lookupTimeoutMs?: number
  /** Fraud reports fetched and re-checked per distrusted() call at most (default 8); the others wait for a later call. */
  maxRechecks?: number
}

const log = componentLog('client', 'reputation')

/** What re-checking one fraud report found: the server it condemns, if it holds. */
type Verdict = { condemns: string } | { condemns: undefined, why: string }

/**
 * Servers' reputation as verifiers published it in the DHT. A record's `failed` count is one
 * verifier's word; keys are free, so any number of self-announced verifiers can publish it
 * about an honest server. A claim counts only from a verifier this client trusts, or once the
 * fraud report the record names has been fetched from its verifier, holds (the server's own
 * signatures bind it to the output), and another verifier's re-computation confirms it.
 */
export class ReputationView {
  private readonly node: PlexusNode
  private readonly verifiers: VerifierSource
  private readonly init: ReputationInit
  private readonly cache = new Map<string, { at: number, record?: ReputationRecord }>()
  /** Re-check outcomes by report digest (bounded); one that cleared the server is asked again after NOT_COUNTED_MS. */
  private readonly verdicts = new Map<string, { at: number, verdict: Promise<Verdict> }>()

  constructor (components: { node: PlexusNode, verifiers: VerifierSource }, init: ReputationInit) {
    this.node = components.node
    this.verifiers = components.verifiers
    this.init = init
  }

  /** The records about `server`, one per verifier that published one. */
  async records (server: string): Promise<ReputationRecord[]> {
    const verifiers = (await this.verifiers.verifiers()).map(v => v.peer).filter(v => v !== server)
    const found = await Promise.all(verifiers.map(async v => await this.record(server, v)))
    return found.filter((r): r is ReputationRecord => r != null && r.modelId === this.init.modelId)
  }

  /** Of `servers`, those a trusted verifier condemns or whose fraud is proven by a re-checked report. */
  async distrusted (servers: string[]): Promise<Set<string>> {
    const out = new Set<string>()
    let budget = this.init.maxRechecks ?? 8
    await Promise.all(servers.map(async s => {
      const claims = (await this.records(s)).filter(r => r.failed > 0)
      if (claims.some(r => this.init.trusted?.has(r.peer) === true)) { out.add(s); return }
      for (const r of claims) {
        const digest = r.reports[r.reports.length - 1]
        if (digest == null) continue // a failure claimed without evidence is not counted
        if (!this.known(digest) && budget-- <= 0) continue
        const v = await this.verdict(digest, r.peer)
        if (v.condemns === s) { out.add(s); return }
      }
    }))
    return out
  }

  private known (digest: string): boolean {
    const hit = this.verdicts.get(digest)
    return hit != null && Date.now() - hit.at < NOT_COUNTED_MS
  }

  private async verdict (digest: string, from: string): Promise<Verdict> {
    let v = this.known(digest) ? this.verdicts.get(digest)!.verdict : undefined
    if (v == null) {
      v = this.recheck(digest, from).catch((err: Error) => ({ condemns: undefined, why: err.message }))
      const entry = { at: Date.now(), verdict: v }
      this.verdicts.delete(digest)
      this.verdicts.set(digest, entry)
      // a proven fraud stays proven; a claim that did not hold may be retried later (a verifier was down)
      void v.then(r => { if (r.condemns != null) entry.at = Infinity })
      while (this.verdicts.size > 1024) this.verdicts.delete(this.verdicts.keys().next().value!)
      void v.then(r => { if (r.condemns == null) log.info(`fraud report ${digest.slice(0, 12)} from verifier ${from.slice(-8)} not counted: ${r.why}`) })
    }
    return await v
  }

  /** Fetches report `digest` from the verifier that names it, checks it, and has another verifier re-compute it. */
  private async recheck (digest: string, from: string): Promise<Verdict> {
    const source = await VerifyClient.open(this.node, from, this.verifiers.target(from))
    let bytes: Uint8Array | undefined
    try { bytes = await source.getReport(digest) } finally { await source.close() }
    if (bytes == null) return { condemns: undefined, why: 'its verifier does not hand it out' }
    if (await reportDigest(bytes) !== digest) return { condemns: undefined, why: 'the bytes sent are not the report named' }
    const { report } = await verifyFraudReport(bytes)
    if (report.modelId !== this.init.modelId) return { condemns: undefined, why: 'the report is about another model' }
    const others = (await this.verifiers.verifiers()).filter(v => v.peer !== from && v.peer !== report.server && v.start <= report.start && v.end >= report.end)
    // a trusted verifier's re-check first, else others in random order (announcing is free: some may not answer)
    others.sort((a, b) => Number(this.init.trusted?.has(b.peer) === true) - Number(this.init.trusted?.has(a.peer) === true) || Math.random() - 0.5)
    for (const other of others.slice(0, MAX_RECHECKERS)) {
      try {
        const client = await VerifyClient.open(this.node, other.peer, this.verifiers.target(other.peer))
        try {
          const r = await client.recheck(bytes)
          return r.confirmed ? { condemns: report.server } : { condemns: undefined, why: `verifier ${other.peer.slice(-8)} re-computed it: ${r.reason}` }
        } finally { await client.close() }
      } catch {}
    }
    return { condemns: undefined, why: 'no other verifier could re-check it' }
  }

  private async record (server: string, verifier: string): Promise<ReputationRecord | undefined> {
    const key = `${server}/${verifier}`
    const hit = this.cache.get(key)
    if (hit != null && Date.now() - hit.at < (this.init.cacheMs ?? 30_000)) return hit.record
    let record: ReputationRecord | undefined
    try {
      record = await getReputation(this.node, server, verifier, { timeoutMs: this.init.lookupTimeoutMs ?? 3000 })
    } catch {}
    this.cache.set(key, { at: Date.now(), record })
    while (this.cache.size > 4096) this.cache.delete(this.cache.keys().next().value!)
    return record
  }
}
