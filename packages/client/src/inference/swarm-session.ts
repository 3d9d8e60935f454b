import { concatFloat32, PlexusError } from '@plexus/runtime'
import type { SessionPipeline, Confirmation } from '@plexus/runtime'
import type { WireDType } from '@plexus/protocol'
import { RemoteSpanSession, RemoteError, PeerFailure } from './remote-span.ts'
import type { Dialer } from './remote-span.ts'
import { findRoute, describeBlocks, NoRouteError } from '../routing/route.ts'
import type { Hop, ServerCandidate } from '../routing/route.ts'
import type { BanList } from '../routing/ban-list.ts'
import type { Auditor, HopAudit } from './auditor.ts'
import { openForwarded, stepForwarded } from './forwarded-route.ts'
import { componentLog } from '@plexus/p2p'

const log = componentLog('client', 'session')

/** Where servers come from: discovery on the swarm (or a fixed list in tests). */
export interface CandidateSource {
  candidates (opts?: { refresh?: boolean }): Promise<ServerCandidate[]>
  /** What the dialer needs to reach a peer (its PeerId, with addresses known to the node). */
  target (peer: string): unknown
  /** The addresses a peer announced (a forwarded route tells each server where its next hop is). */
  addrs?: (peer: string) => string[]
}

export interface SwarmSessionComponents {
  dialer: Dialer
  source: CandidateSource
  bans: BanList
  /** Spot checks (trust level `verified`); absent: `fast`. */
  auditor?: Auditor
  /** Servers not to route through whatever they announce (e.g. a bad reputation). */
  distrusted?: (peers: string[]) => Promise<Set<string>>
}

export interface SwarmSessionInit {
  modelId: string
  modelName: string
  numBlocks: number
  hiddenSize: number
  maxLength: number
  dtype?: WireDType
  stepTimeoutMs?: number
  /** Route repairs allowed over the session's life before giving up. */
  maxRepairs?: number
  /** How long to wait for a full server to have room before answering `busy`. */
  busyWaitMs?: number
  /**
   * Servers push activations straight to the next server (forwarded-route.ts) instead of back
   * through this client (default; false: every hop answers the client). A failed hop then
   * rebuilds the whole route and replays the inputs. A route whose servers cannot reach each
   * other is relayed by the client instead.
   */
  forward?: boolean
}

/**
 * Pauses before re-looking for holders of blocks nobody seems to serve, ms (≈ 10 s in all: a
 * server that just started may take seconds to be findable on a loaded machine).
 */
const NO_ROUTE_RETRIES = [0, 500, 1000, 2000, 3000, 3500]

interface LiveHop {
  hop: Hop
  session: RemoteSpanSession
  /** Every input this hop has consumed, in order: replayed to a replacement server. */
  history: Float32Array[]
  /** Its steps as committed, for spot checks. */
  audit?: HopAudit
}

/**
 * A generation session through a route of servers. It remembers each hop's inputs so that when
 * a server dies, hangs or fails mid-generation, a replacement route for the lost blocks is opened
 * and the past inputs replayed at the same positions: the output is the same as without the fault.
 */
export class SwarmSession implements SessionPipeline {
  private readonly c: SwarmSessionComponents
  private readonly init: SwarmSessionInit
  private hops: LiveHop[] = []
  /** Audits of hops replaced mid-session whose last steps are still to be checked. */
  private retired: HopAudit[] = []
  private repairs = 0
  private closed = false
  /** A server of this session's route could not (or would not) push to its next hop: relayed from then on. */
  private relayed = false

  private constructor (components: SwarmSessionComponents, init: SwarmSessionInit) {
    this.c = components
    this.init = init
  }

  static async open (components: SwarmSessionComponents, init: SwarmSessionInit): Promise<SwarmSession> {
    const s = new SwarmSession(components, init)
    s.hops = await s.openRoute(0, init.numBlocks)
    return s
  }

  /** The current route, for display. */
  get route (): Hop[] { return this.hops.map(h => h.hop) }

  /** Per hop, the last step's wall time seen here and the server's own compute time (ms). */
  lastStepTimings (): Array<Hop & { wallMs: number, computeMs: number }> {
    return this.hops.map(h => ({ ...h.hop, wallMs: h.session.lastWallMs, computeMs: h.session.lastComputeMs }))
  }

  /** Opens sessions on a fresh route through `[from, to)`, skipping banned or refusing peers. */
  private async openRoute (from: number, to: number): Promise<LiveHop[]> {
    const busyDeadline = Date.now() + (this.init.busyWaitMs ?? 15_000)
    let refresh = false
    let noRoute = 0
    for (let attempt = 0; ; attempt++) {
      const all = await this.c.source.candidates({ refresh })
      refresh = true
      const distrusted = await this.c.distrusted?.(all.map(c => c.peer)) ?? new Set<string>()
      const usable = all.filter(c => !this.c.bans.isBanned(c.peer) && !distrusted.has(c.peer))
      let route
      try {
        route = findRoute(usable, from, to, this.init.modelName)
      } catch (err) {
        if (!(err instanceof NoRouteError)) throw err
        // Holders that are only full get room back as sessions end: wait a while for them.
        const busy = all.filter(c => this.c.bans.isBusy(c.peer))
        if (busy.length > 0 && findRouteOrUndefined([...usable, ...busy], from, to) != null) {
          if (Date.now() >= busyDeadline) {
            throw new RemoteError(busy[0].peer, 'busy', `busy: every server of ${err.missing.map(describeBlocks).join(', ')} of ${this.init.modelName} is full (${busy.length} tried); try again later`)
          }
          await new Promise(resolve => setTimeout(resolve, 250 + Math.random() * 500))
          refresh = false
          attempt--
          continue
        }
        // The cached view may predate new holders, and fresh provider records take a moment to
        // spread: look again a few times before giving up.
        if (noRoute < NO_ROUTE_RETRIES.length) {
          await new Promise(resolve => setTimeout(resolve, NO_ROUTE_RETRIES[noRoute++]))
          continue
        }
        if (usable.length < all.length) {
          throw new NoRouteError(`${err.message} (after excluding ${all.length - usable.length} failed peer(s))`, err.missing)
        }
        throw err
      }
      const opened: LiveHop[] = []
      try {
        if (this.forwarding) {
          const base = { modelId: this.init.modelId, maxLength: this.init.maxLength, hiddenSize: this.init.hiddenSize, dtype: this.init.dtype, stepTimeoutMs: this.init.stepTimeoutMs }
          try {
            const sessions = await openForwarded(this.c.dialer, route.hops, hop => ({ ...base, target: this.c.source.target(hop.peer) }), {
              addrs: peer => this.c.source.addrs?.(peer) ?? [],
              // every hop or none: a server must not tell whether its hop is checked
              returnOutputs: this.c.auditor != null
            })
            return sessions.map((session, i) => ({ hop: route.hops[i], session, history: [], audit: this.c.auditor?.newHop(route.hops[i].peer, session.sessionId, route.hops[i].start, route.hops[i].end) }))
          } catch (err) {
            // servers that cannot reach each other (NAT, firewalls) or do not forward: the
            // client carries each hop's output itself, on the same route
            if (!(err instanceof RemoteError && err.code === 'next-hop')) throw err
            log.info(`server ${err.peer.slice(-8)} cannot forward to its next hop (${err.message}); relaying this session through the client`)
            this.relayed = true
          }
        }
        for (const hop of route.hops) {
          const session = await RemoteSpanSession.open(this.c.dialer, {
            peer: hop.peer, target: this.c.source.target(hop.peer), modelId: this.init.modelId, start: hop.start, end: hop.end,
            maxLength: this.init.maxLength, hiddenSize: this.init.hiddenSize, dtype: this.init.dtype, stepTimeoutMs: this.init.stepTimeoutMs
          })
          opened.push({ hop, session, history: [], audit: this.c.auditor?.newHop(hop.peer, session.sessionId, hop.start, hop.end) })
        }
        return opened
      } catch (err: any) {
        for (const h of opened) await h.session.close()
        if (!(err instanceof PeerFailure || err instanceof RemoteError) || attempt >= 8) throw err
        // busy: try elsewhere without punishing; anything else: ban with backoff
        this.c.bans.fail(err.peer, err instanceof RemoteError && err.code === 'busy' ? 'busy' : 'failure')
        log.info(`route through ${describeBlocks([from, to])}: ${err.message}; rerouting`)
      }
    }
  }

  /** Forwarded mode: each step goes through the servers without coming back here in between. */
  private get forwarding (): boolean { return this.init.forward !== false && !this.relayed }

  async forward (hidden: Float32Array, tokens: number): Promise<Float32Array> {
    if (this.closed) throw new Error('session is closed')
    if (this.forwarding) return await this.forwardRouted(hidden, tokens)
    let h = hidden
    let i = 0
    while (i < this.hops.length) {
      const live = this.hops[i]
      try {
        h = await this.runHop(live, h, tokens)
        i++
      } catch (err: any) {
        if (!(err instanceof PeerFailure || err instanceof RemoteError)) throw err
        const r = await this.repair(i, err, h, tokens)
        h = r.out
        i += r.hops
      }
    }
    return h
  }

  /** Replaces hop `i` (failed with `err`) by a new route for its blocks, replays, runs `h`. */
  private async repair (i: number, err: PeerFailure | RemoteError, h: Float32Array, tokens: number): Promise<{ out: Float32Array, hops: number }> {
    const failed = this.hops[i]
    this.c.bans.fail(failed.hop.peer, err instanceof RemoteError && err.code === 'busy' ? 'busy' : 'failure')
    log.info(`server ${failed.hop.peer.slice(-8)} failed on ${describeBlocks([failed.hop.start, failed.hop.end])}: ${err.message}`)
    await failed.session.close()
    // its last steps may still hide a lie that shaped the tokens since: check them later
    if (failed.audit != null && failed.audit.checked && failed.audit.pending > 0) this.retired.push(failed.audit)
    else await failed.audit?.dispose()
    const maxRepairs = this.init.maxRepairs ?? 16
    for (;;) {
      if (this.repairs++ >= maxRepairs) {
        throw new PlexusError('route-repairs', `gave up after ${maxRepairs} route repairs; ${describeBlocks([failed.hop.start, failed.hop.end])} could not be served: ${err.message}`, { httpStatus: 503, cause: err })
      }
      let replacement: LiveHop[]
      try {
        replacement = await this.openRoute(failed.hop.start, failed.hop.end)
      } catch (e: any) {
        // say why the last holder was dropped, not only that there is no other
        if (e instanceof NoRouteError) throw new NoRouteError(`${e.message}; the last one failed: ${err.message}`, e.missing)
        throw e
      }
      try {
        const past = concatFloat32(failed.history)
        const pastTokens = failed.history.reduce((n, x) => n + x.length, 0) / this.init.hiddenSize
        let x = past
        let y = h
        for (const r of replacement) {
          // Rebuild the cache at positions [0, pastTokens), then this step at the right position.
          if (pastTokens > 0) x = await this.runHop(r, x, pastTokens)
          y = await this.runHop(r, y, tokens)
        }
        this.hops.splice(i, 1, ...replacement)
        log.info(`rerouted ${describeBlocks([failed.hop.start, failed.hop.end])} through ${replacement.map(r => `${r.hop.peer.slice(-8)}[${r.hop.start},${r.hop.end})`).join(' → ')}`)
        return { out: y, hops: replacement.length }
      } catch (e: any) {
        for (const r of replacement) await r.session.close()
        if (!(e instanceof PeerFailure || e instanceof RemoteError)) throw e
        this.c.bans.fail(e.peer, e instanceof RemoteError && e.code === 'busy' ? 'busy' : 'failure')
        err = e
      }
    }
  }

  /** A step through the forwarded route; a failed hop rebuilds the route and replays the inputs first. */
  private async forwardRouted (hidden: Float32Array, tokens: number): Promise<Float32Array> {
    for (;;) {
      // a rebuilt route may have fallen back to relaying
      if (!this.forwarding) return await this.forward(hidden, tokens)
      try {
        return await this.runRouted(hidden, tokens)
      } catch (err: any) {
        if (!(err instanceof PeerFailure || err instanceof RemoteError)) throw err
        await this.rebuild(err)
      }
    }
  }

  /** Every hop anew, without the failed server, fed the positions so far (as one step). */
  private async rebuild (err: PeerFailure | RemoteError): Promise<void> {
    const maxRepairs = this.init.maxRepairs ?? 16
    const past = concatFloat32(this.hops[0]?.history ?? [])
    for (;;) {
      this.c.bans.fail(err.peer, err instanceof RemoteError && err.code === 'busy' ? 'busy' : 'failure')
      log.info(`server ${err.peer.slice(-8)} failed: ${err.message}; rebuilding the forwarded route`)
      if (this.repairs++ >= maxRepairs) throw new PlexusError('route-repairs', `gave up after ${maxRepairs} route repairs: ${err.message}`, { httpStatus: 503, cause: err })
      // checked hops' last steps may still hide a lie that shaped the tokens since
      for (const h of this.hops) {
        if (h.audit != null && h.audit.checked && h.audit.pending > 0) this.retired.push(h.audit)
        else await h.audit?.dispose()
        await h.session.close()
      }
      try {
        this.hops = []
        this.hops = await this.openRoute(0, this.init.numBlocks)
        if (past.length > 0) await this.replay(past, past.length / this.init.hiddenSize)
        log.info(`rerouted through ${this.hops.map(r => `${r.hop.peer.slice(-8)}[${r.hop.start},${r.hop.end})`).join(' → ')}`)
        return
      } catch (e: any) {
        if (e instanceof NoRouteError) throw new NoRouteError(`${e.message}; the last one failed: ${err.message}`, e.missing)
        if (!(e instanceof PeerFailure || e instanceof RemoteError)) throw e
        err = e
      }
    }
  }

  /** Feeds a fresh route the first `length` positions again (their embeddings). */
  private async replay (x: Float32Array, length: number): Promise<void> {
    if (this.forwarding) { await this.runRouted(x, length); return }
    for (const live of this.hops) x = await this.runHop(live, x, length)
  }

  /** One step through the forwarded route, remembered for replay and for spot checks. */
  private async runRouted (x: Float32Array, tokens: number): Promise<Float32Array> {
    const r = await stepForwarded(this.hops.map(h => h.session), x, tokens, { dtype: this.init.dtype ?? 'f32', timeoutMs: this.init.stepTimeoutMs ?? 30_000 })
    this.hops[0].history.push(x)
    r.hops.forEach((step, i) => {
      const audit = this.hops[i].audit
      if (audit == null) return
      if (step.commitment != null && step.input != null && step.output != null) audit.record({ commitment: step.commitment, input: step.input, output: step.output }, tokens)
      else if (audit.checked) throw new PeerFailure(this.hops[i].hop.peer, 'a checked hop sent no output to check')
    })
    return r.output
  }

  /** One step through one hop, remembered for replay and for spot checks. */
  private async runHop (live: LiveHop, x: Float32Array, tokens: number): Promise<Float32Array> {
    const out = await live.session.forward(x, tokens)
    live.history.push(x)
    if (live.audit != null && live.session.lastStep != null) live.audit.record(live.session.lastStep, tokens)
    return out
  }

  /** Positions the session holds. */
  get length (): number { return this.hops[0]?.session.length ?? 0 }

  /**
   * Keeps only the first `length` positions on every hop (speculative decoding drops rejected
   * drafts): no round trip of its own, the next step tells the servers to drop them first (a
   * forwarded route passes it from hop to hop); each hop's replay history is cut to match. Spot
   * checks commit to every step as sent, so a verified session refuses.
   */
  async truncate (length: number): Promise<void> {
    if (this.closed) throw new Error('session is closed')
    if (this.c.auditor != null) throw new Error('a verified session cannot be rolled back by its client: its steps are committed for spot checks')
    if (!Number.isInteger(length) || length < 0 || length > this.length) throw new RangeError(`cannot truncate the session to ${length}: it holds ${this.length} positions`)
    // forwarded: only the first hop hears it from here, the rest from the hop before
    this.hops.forEach((h, i) => { h.session.rewindTo(length, !this.forwarding || i === 0) })
    for (const h of this.hops) h.history = cutHistory(h.history, length * this.init.hiddenSize)
  }

  /**
   * Spot checks (trust level `verified`): every few steps, and always when `final`, verifiers
   * re-compute the checked hops' new steps. On a mismatch the cheater is banned and the whole
   * session is rebuilt on a new route from the last confirmed position; the caller resumes there.
   * Without spot checks every output is confirmed as it comes.
   */
  async confirm (final: boolean): Promise<Confirmation> {
    const auditor = this.c.auditor
    if (auditor == null) return { confirmed: Infinity }
    const audits = (): HopAudit[] => [...this.hops.flatMap(h => h.audit != null ? [h.audit] : []), ...this.retired]
    if (!auditor.due(final)) return { confirmed: auditor.verifiedLength(audits(), this.length) }
    const r = await auditor.sync(audits())
    if (r.ok) {
      for (const a of this.retired) await a.dispose()
      this.retired = []
      return { confirmed: auditor.verifiedLength(audits(), this.length) }
    }
    await this.rollback(r.rollbackTo)
    return { rewoundTo: r.rollbackTo }
  }

  /** A new route for every block, fed the first `length` positions again (their embeddings). */
  private async rollback (length: number): Promise<void> {
    const hidden = this.init.hiddenSize
    const embeddings = concatFloat32(this.hops[0].history).subarray(0, length * hidden)
    await this.dropHops()
    this.hops = await this.openRoute(0, this.init.numBlocks)
    if (length === 0) return
    await this.replay(embeddings.slice(), length)
    log.info(`replayed ${length} positions through ${this.hops.map(r => `${r.hop.peer.slice(-8)}[${r.hop.start},${r.hop.end})`).join(' → ')}`)
  }

  private async dropHops (): Promise<void> {
    await Promise.all([...this.hops.map(async h => { await h.session.close(); await h.audit?.dispose() }), ...this.retired.map(async a => { await a.dispose() })])
    this.hops = []
    this.retired = []
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    // the route stays readable (for display) after the sessions on it are closed
    const route = this.hops
    await this.dropHops()
    this.hops = route
  }
}

function findRouteOrUndefined (candidates: ServerCandidate[], from: number, to: number): ReturnType<typeof findRoute> | undefined {
  try { return findRoute(candidates, from, to) } catch { return undefined }
}

/** The first `values` values of a hop's consecutive inputs. */
function cutHistory (history: Float32Array[], values: number): Float32Array[] {
  const out: Float32Array[] = []
  for (const x of history) {
    if (values <= 0) break
    out.push(x.length <= values ? x : x.subarray(0, values))
    values -= x.length
  }
  return out
}
