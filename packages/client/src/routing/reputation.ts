import { getReputation } from '@plexus/p2p'
import type { PlexusNode, ReputationRecord } from '@plexus/p2p'
import type { VerifierSource } from '../inference/auditor.ts'

export interface ReputationInit {
  modelId: string
  /** Verifiers whose record alone condemns a server. */
  trusted?: Set<string>
  /** Records from this many distinct verifiers condemn a server without trusting any of them. Default 2. */
  quorum?: number
  cacheMs?: number
  lookupTimeoutMs?: number
}

/**
 * Servers' reputation as verifiers published it in the DHT. One verifier's word could be a lie
 * (it cannot forge a server's commitments, but it can claim a fraud it never proved), so failed
 * checks count only from a trusted verifier or when `quorum` verifiers agree.
 */
export class ReputationView {
  private readonly node: PlexusNode
  private readonly verifiers: VerifierSource
  private readonly init: ReputationInit
  private readonly cache = new Map<string, { at: number, record?: ReputationRecord }>()

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

  /** Of `servers`, those the swarm's verifiers have caught lying. */
  async distrusted (servers: string[]): Promise<Set<string>> {
    const out = new Set<string>()
    await Promise.all(servers.map(async s => {
      const bad = (await this.records(s)).filter(r => r.failed > 0)
      if (bad.some(r => this.init.trusted?.has(r.peer) === true) || new Set(bad.map(r => r.peer)).size >= (this.init.quorum ?? 2)) out.add(s)
    }))
    return out
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
    return record
  }
}
