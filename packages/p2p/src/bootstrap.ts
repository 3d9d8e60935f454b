import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dhtPeerCount } from './node.ts'
import { isDnsAddr, resolveAddr, DnsAddrError } from './dnsaddr.ts'
import { SwarmKeyMismatchError } from './swarm-key.ts'
import type { PlexusNode } from './node.ts'
import type { PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { PlexusError } from '@plexus/runtime'

export const DEFAULT_BOOTSTRAP_TIMEOUT_MS = 5000

export interface BootstrapAddr {
  addr: Multiaddr
  /** Absent only for `/dnsaddr/NAME`, whose TXT records name the peers. */
  peerId?: PeerId
}

/**
 * bootstrap/peers.txt: the bootstrap peers of known public swarms, shipped with Plexus (a packed
 * install has no repository root: `npm run pack` puts a copy beside the compiled code).
 */
const PACKED_PEERS_FILE = new URL('./bootstrap/peers.txt', import.meta.url)
export const BOOTSTRAP_PEERS_FILE = fileURLToPath(existsSync(PACKED_PEERS_FILE) ? PACKED_PEERS_FILE : new URL('../../../bootstrap/peers.txt', import.meta.url))

/**
 * The bootstrap peers a command uses when given none: the multiaddrs in `file` (default
 * bootstrap/peers.txt), one a line, `#` starting a comment. ($PLEXUS_BOOTSTRAP, read with the
 * other PLEXUS_* variables, takes the place of --bootstrap and so overrides this list.)
 */
export function defaultBootstrapPeers (file = BOOTSTRAP_PEERS_FILE): string[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw new PlexusError('bootstrap-list', `cannot read ${file}: ${(err as Error).message}`)
  }
  const addrs = text.split('\n').map(l => l.replace(/#.*/, '').trim()).filter(l => l !== '')
  for (const a of addrs) parseBootstrapAddr(a)
  return addrs
}

/** The bootstrap list to use: the one given, else the shipped one; none at all is an error naming the ways to give one. */
export function bootstrapOrDefault (given: string[] | undefined, file = BOOTSTRAP_PEERS_FILE): string[] {
  if (given != null && given.length > 0) return given
  const listed = defaultBootstrapPeers(file)
  if (listed.length > 0) return listed
  throw new PlexusError('no-bootstrap-peers', `no bootstrap peers: pass --bootstrap MULTIADDR (or set PLEXUS_BOOTSTRAP), or list them in ${file}`, { httpStatus: 400 })
}

export interface BootstrapResult {
  /** The addresses (as given) that connected. */
  connected: string[]
  /** The addresses that did not, each with a one-line reason. */
  failed: Array<{ addr: string, error: string }>
}

export interface DialBootstrapOptions {
  /** Deadline per address (all are dialled in parallel), DNS lookups included. Default 5000 ms. */
  timeoutMs?: number
  signal?: AbortSignal
}

/**
 * Parses a bootstrap multiaddr, which must name the peer (`.../p2p/<id>`): without the id a
 * dial cannot tell the bootstrap peer from an impostor, and libp2p's own bootstrap module
 * silently drops such entries.
 */
export function parseBootstrapAddr (s: string): BootstrapAddr {
  const bad = (why: string): Error => new PlexusError('bootstrap-address', `bad bootstrap address "${s}": ${why}`, { httpStatus: 400 })
  if (typeof s !== 'string' || s.trim() === '') throw bad('empty')
  let addr: Multiaddr
  try {
    addr = multiaddr(s.trim())
  } catch (err) {
    throw bad((err as Error).message)
  }
  const components = addr.getComponents()
  const last = components[components.length - 1]
  // the TXT records of a dnsaddr name carry the peer ids
  if (components.length === 1 && last?.name === 'dnsaddr') return { addr }
  if (last?.name !== 'p2p' || last.value == null) throw bad('must end in /p2p/<peer id>')
  if (components.length < 2) throw bad('has no transport address before /p2p/<peer id>')
  let peerId: PeerId
  try {
    peerId = peerIdFromString(last.value)
  } catch (err) {
    throw bad(`invalid peer id "${last.value}": ${(err as Error).message}`)
  }
  return { addr, peerId }
}

/**
 * Dials every bootstrap address in parallel, each under its own deadline. Throws when the list
 * is not empty and no peer connected, listing why each failed; otherwise reports the failures.
 * A malformed address throws at once (a configuration mistake, not a network condition).
 * libp2p reuses an open connection to the named peer whatever the address, and merges
 * concurrent dials of one peer, so two addresses of one peer succeed or fail together.
 */
export async function dialBootstrap (node: PlexusNode, addrs: string[], opts: DialBootstrapOptions = {}): Promise<BootstrapResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_BOOTSTRAP_TIMEOUT_MS
  const log = node.logger.forComponent('plexus:bootstrap')
  const parsed = addrs.map(s => ({ s, ...parseBootstrapAddr(s) }))
  // a shared bootstrap list may name this very node
  const targets = parsed.filter(p => p.peerId == null || !p.peerId.equals(node.peerId))

  const result: BootstrapResult = { connected: [], failed: [] }
  await Promise.all(targets.map(async ({ s, addr }) => {
    const deadline = AbortSignal.timeout(timeoutMs)
    const signal = opts.signal != null ? AbortSignal.any([opts.signal, deadline]) : deadline
    const t0 = Date.now()
    try {
      const peers = await peersOf(node, addr, signal)
      if (peers.size === 0) { result.connected.push(s); return } // names only this node
      // a dnsaddr name may list several peers: the entry counts when one of them answers
      await Promise.any([...peers.values()].map(async list => await node.dial(list, { signal })))
      log('connected to bootstrap peer %a in %d ms', addr, Date.now() - t0)
      result.connected.push(s)
    } catch (err) {
      if (opts.signal?.aborted === true) return
      const error = `cannot reach bootstrap peer ${s}: ${describeDialError(err, addr, deadline.aborted ? timeoutMs : undefined, { privateSwarm: node.services.plexus.network.swarmKey != null })}`
      log.error(error)
      result.failed.push({ addr: s, error })
    }
  }))
  opts.signal?.throwIfAborted()

  if (targets.length > 0 && result.connected.length === 0) {
    throw new PlexusError('swarm-unreachable', `could not connect to any bootstrap peer:\n  ${result.failed.map(f => f.error).join('\n  ')}`, { httpStatus: 503 })
  }
  return result
}

/** The addresses of each peer an entry names, DNS names resolved; this node left out. */
async function peersOf (node: PlexusNode, addr: Multiaddr, signal: AbortSignal): Promise<Map<string, Multiaddr[]>> {
  const resolved = isDnsAddr(addr) ? await resolveAddr(addr, node.services.plexus.network.resolver, signal) : [addr]
  const peers = new Map<string, Multiaddr[]>()
  for (const a of resolved) {
    const id = a.getComponents().findLast(c => c.name === 'p2p')?.value
    if (id == null || id === node.peerId.toString()) continue
    peers.set(id, [...(peers.get(id) ?? []), a])
  }
  return peers
}

/**
 * One short phrase for why a dial failed; `timedOutAfterMs` is set when our deadline fired,
 * `privateSwarm` when the dialing node holds a swarm key.
 */
export function describeDialError (err: unknown, addr: Multiaddr, timedOutAfterMs?: number, context: { privateSwarm?: boolean } = {}): string {
  type DialFailure = Error & { code?: string }
  // a dial of several addresses fails with all their errors; the first is as telling as any
  let first: unknown = err
  while (first instanceof AggregateError && first.errors.length > 0) first = first.errors[0]
  const e = first as DialFailure | undefined
  const host = addr.getComponents().find(c => c.name.startsWith('dns'))?.value ?? 'host'
  const code = e?.code ?? ''
  const msg = String(e?.message ?? e)

  if (e instanceof DnsAddrError) return msg
  if (e instanceof SwarmKeyMismatchError || /swarm key mismatch/.test(msg)) return 'swarm key mismatch: the peer is not in this private swarm (it holds another --swarm-key, or none)'
  // a handshake cut short: the peer's side of the swarm key check refused us first
  const handshake = e?.name === 'EncryptionFailedError'
  if (handshake && context.privateSwarm === true && (code === 'ECONNRESET' || /ECONNRESET|aborted|timeout|end of stream/i.test(msg))) {
    return 'swarm key mismatch: the peer refused this swarm\'s key (it holds another --swarm-key, or none)'
  }
  // a private swarm's node answers with its key exchange, which multistream-select reads as garbage
  if (handshake && context.privateSwarm !== true && /ECONNRESET|newline|multistream|protocol selection|length too long|invalid/i.test(msg) && !/identity key/.test(msg)) {
    return 'the peer refused the handshake: it belongs to a private swarm (give its --swarm-key)'
  }
  if (timedOutAfterMs != null || e?.name === 'TimeoutError') {
    const hint = context.privateSwarm === true ? ' (a peer without this swarm\'s key never completes the handshake)' : ''
    return timedOutAfterMs != null ? `timed out after ${formatSeconds(timedOutAfterMs)}${hint}` : `timed out${hint}`
  }
  if (code === 'ECONNREFUSED') return 'connection refused'
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL' || e?.name === 'DNSQueryFailedError') {
    return `DNS lookup of ${host} failed${code !== '' ? ` (${code})` : ''}`
  }
  if (code === 'EHOSTUNREACH') return 'host unreachable'
  if (code === 'ENETUNREACH') return 'network unreachable'
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'connection reset by the remote side'
  const mismatch = /identity key (\S+) does not match expected remote identity key (\S+)/.exec(msg)
  if (mismatch != null) return `peer id mismatch: the peer there is ${mismatch[1]}, not ${mismatch[2]}`
  if (e?.name === 'UnexpectedPeerError' || /does not match expected/.test(msg)) return `peer id mismatch (${msg})`
  if (e?.name === 'NoValidAddressesError' || e?.name === 'TransportUnavailableError') return 'no configured transport can dial this address'
  if (e?.name === 'DialError' && /self/.test(msg)) return 'this is our own address'
  return `${e?.name ?? 'Error'}: ${msg}`
}

function formatSeconds (ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`
}

export interface BootstrapKeeperOptions {
  /** Below this many DHT peers (or with no connection at all), dial the bootstrap peers again. Default 1. */
  minPeers?: number
  /** How often to look. Default 2 s. */
  checkIntervalMs?: number
  /** Longest wait between failed re-dials (they back off from 1 s). Default 30 s. */
  maxBackoffMs?: number
  timeoutMs?: number
}

/**
 * Dials the bootstrap peers again whenever the node has lost its way into the DHT (a dropped
 * connection, a bootstrap peer that restarted): without it, a node whose only connection closed
 * stays alone for good, announcing to nobody. Stops with the node, or when the returned function
 * is called.
 */
export function keepBootstrapped (node: PlexusNode, addrs: string[], opts: BootstrapKeeperOptions = {}): () => void {
  const log = node.logger.forComponent('plexus:bootstrap')
  const minPeers = opts.minPeers ?? 1
  const maxBackoffMs = opts.maxBackoffMs ?? 30_000
  const controller = new AbortController()
  let dialing = false
  let backoffMs = 1000
  let notBefore = 0
  const check = (): void => {
    if (dialing || controller.signal.aborted || node.status !== 'started') return
    // lost: an empty routing table, or no connection left at all (the table keeps peers that
    // are gone, and a query that only dials dead entries finds nothing)
    const lost = dhtPeerCount(node) < minPeers || node.getConnections().length === 0
    if (!lost || Date.now() < notBefore) return
    dialing = true
    log('%d DHT peers (want %d): dialling the bootstrap peers again', dhtPeerCount(node), minPeers)
    dialBootstrap(node, addrs, { timeoutMs: opts.timeoutMs, signal: controller.signal })
      .then(() => { backoffMs = 1000; notBefore = Date.now() + backoffMs })
      .catch(err => {
        if (controller.signal.aborted) return
        log.error('re-dialling the bootstrap peers failed (next try in %d ms): %s', backoffMs, (err as Error).message)
        notBefore = Date.now() + backoffMs
        backoffMs = Math.min(backoffMs * 2, maxBackoffMs)
      })
      .finally(() => { dialing = false })
  }
  const onDisconnect = (): void => { setTimeout(check, 100).unref?.() }
  node.addEventListener('peer:disconnect', onDisconnect)
  const timer = setInterval(check, opts.checkIntervalMs ?? 2000)
  timer.unref?.()
  const stop = (): void => {
    controller.abort()
    clearInterval(timer)
    node.removeEventListener('peer:disconnect', onDisconnect)
    node.removeEventListener('stop', stop)
  }
  node.addEventListener('stop', stop)
  return stop
}
