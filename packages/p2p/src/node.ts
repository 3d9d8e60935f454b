import { noise } from '@chainsafe/libp2p-noise'
import { quic } from '@chainsafe/libp2p-quic'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { autoNATv2 } from '@libp2p/autonat-v2'
import { dcutr } from '@libp2p/dcutr'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, removePublicAddressesMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { REPUTATION_NAMESPACE, reputationSelector, ReputationValidator } from './reputation.ts'
import { announceable, isLinkLocalAddr, isLoopbackAddr, isQuicAddr, onlyLoopback } from './addresses.ts'
import { createResolver } from './dnsaddr.ts'
import { swarmKeyProtector } from './swarm-key.ts'
import { withLinkDelay } from './link-delay.ts'
import { nodeServices } from './services.ts'
import { portMapping } from './port-mapping.ts'
import { peerLiveness } from './liveness.ts'
import type { PortMapping } from './port-mapping.ts'
import type { NodeServices } from './services.ts'
import type { SwarmKey, SwarmKeyMismatch } from './swarm-key.ts'
import type { Identify } from '@libp2p/identify'
import type { ConnectionMonitorInit, Libp2pOptions } from 'libp2p'
import type { ComponentLogger, Libp2p, PeerInfo, PrivateKey } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import type { Ping } from '@libp2p/ping'
import { UsageError } from '@plexus/runtime'

/** Every Plexus protocol id starts with this, so Plexus peers never mix with public IPFS ones. */
export const PROTOCOL_PREFIX = '/plexus'
export const DHT_PROTOCOL = `${PROTOCOL_PREFIX}/kad/1.0.0`

/** The DHT's protocol id: a private swarm's own, so two swarms never mix records. */
export function dhtProtocol (swarmKey?: SwarmKey): string {
  return swarmKey == null ? DHT_PROTOCOL : `${PROTOCOL_PREFIX}/swarm/${swarmKey.id}/kad/1.0.0`
}

/** Network settings that every node a process creates shares unless its init says otherwise (set once by a CLI). */
export interface ProcessNetwork {
  swarmKey?: SwarmKey
  /** A DNS server (`IP[:PORT]`) for bootstrap names instead of the system's. */
  dnsResolver?: string
  onSwarmKeyMismatch?: (m: SwarmKeyMismatch) => void
  /** STUN servers for WebRTC (`stun:HOST:PORT`). */
  stun?: string[]
  /** Dial relayed and WebRTC addresses (a client reaching servers behind NAT). */
  dialRelayed?: boolean
}
let processNetwork: ProcessNetwork = {}
export function setProcessNetwork (network: ProcessNetwork): void { processNetwork = { ...network } }

/** libp2p's services of a Plexus node, and `plexus`: what the node owns besides (services.ts). */
export type PlexusServices = { identify: Identify, ping: Ping, dht: KadDHT, plexus: NodeServices, upnp?: PortMapping }
export type PlexusNode = Libp2p<PlexusServices>

/** Defaults chosen so a provider record of a vanished server is gone within ~3.5 minutes. */
export const DEFAULT_PROVIDER_VALIDITY_MS = 3 * 60_000
const PROVIDER_CLEANUP_INTERVAL_MS = 30_000

export interface PlexusNodeInit {
  privateKey: PrivateKey
  /**
   * Default `['/ip4/127.0.0.1/tcp/0']` (the CLIs default to every interface, TCP and QUIC:
   * `withQuic(defaultListen())`). QUIC addresses (`/udp/P/quic-v1`) need `quic` (the default).
   */
  listen?: string[]
  /** Addresses to advertise instead of the listen addresses (e.g. a port-forwarded one). */
  announce?: string[]
  /** Addresses to advertise besides those found, without waiting for peers to confirm them. */
  appendAnnounce?: string[]
  /** 'server' answers DHT queries and stores records; 'client' only asks. */
  dhtMode: 'server' | 'client'
  /**
   * Adds the WebRTC and circuit-relay transports, for peers behind NAT: such a peer reserves a
   * slot on a relay (a node with `relayServer`), and others reach it through the relay, which
   * also carries the signalling that sets up a direct WebRTC connection. Default false.
   */
  webrtc?: boolean
  /**
   * Relays for NATed peers (circuit relay v2 server). A relayed connection carries sessions
   * when no direct one can be made (a symmetric NAT), so it has no byte or time limit; what a
   * relay spends is bounded by RELAY_LIMITS (reservations, relayed streams per peer). Give it to
   * nodes with a reachable address, e.g. the bootstrap node. Default false.
   */
  relayServer?: boolean
  /**
   * Asks the home router (UPnP IGD) to forward the listen ports, and announces its public address
   * with them once it did (port-mapping.ts): peers then dial the node directly. Default false.
   */
  upnp?: boolean
  /** STUN servers for WebRTC (`stun:HOST:PORT`): they tell a node behind NAT its public address. Default: none (a LAN swarm may be offline). */
  stun?: string[]
  /**
   * Adds the circuit-relay and WebRTC transports for dialing only: reach servers that are
   * behind NAT through their relayed and WebRTC addresses (direct ones are tried first).
   */
  dialRelayed?: boolean
  /**
   * Which peer addresses the DHT keeps. 'private' drops public ones; 'all' (default) keeps every
   * usable one: all but link-local, and loopback only when this node listens on loopback alone
   * (or not at all): a LAN node and a public one meet in one swarm.
   */
  peerAddresses?: 'private' | 'all'
  /**
   * k of the DHT (default 20). findProviders stops once k providers are found, so a client that
   * must see every holder of a block in a large swarm can raise it (e.g. 256) at the price of
   * longer lookups (the query can no longer stop early).
   */
  kBucketSize?: number
  /**
   * How long other peers keep our provider records (ms). An `Announcer` must refresh more often
   * than this. Stale records of a vanished peer disappear after at most this plus 30 s.
   */
  providerValidityMs?: number
  /**
   * libp2p's connection monitor, tuned. Default: off, and liveness.ts pings every connection
   * every 1 s instead, dropping a peer silent for 3 s (a frozen peer goes in ~3–4 s) without
   * counting the time this process itself stalled.
   */
  connectionMonitor?: ConnectionMonitorInit
  /** Route libp2p's and Plexus' logs (default: libp2p's `DEBUG=`-controlled logger). */
  logger?: ComponentLogger
  /** A private swarm's key: only peers holding it can connect, and the DHT is the swarm's own. */
  swarmKey?: SwarmKey
  /** Called when a connection fails because the other side holds another swarm key (or none). */
  onSwarmKeyMismatch?: (m: SwarmKeyMismatch) => void
  /** A DNS server (`IP[:PORT]`) for /dnsaddr, /dns4, /dns6 bootstrap addresses. Default: the system's. */
  dnsResolver?: string
  /**
   * The QUIC transport (dial, and listen on the `/quic-v1` listen addresses). Default: on, except
   * in a private swarm: QUIC encrypts with its own TLS and skips libp2p's connection protector,
   * so a peer without the swarm key could connect over it.
   */
  quic?: boolean
  /** Bytes of frames every channel the node serves may hold at once (byte-budget.ts). Default 256 MiB. */
  maxBufferedBytes?: number
}

/** Inbound connections one IP may open per second (more are refused on accept). */
export const INBOUND_CONNECTIONS_PER_HOST = 16

/** Builds and starts a libp2p node with the Plexus transports, services and DHT settings. */
export async function createPlexusNode (init: PlexusNodeInit): Promise<PlexusNode> {
  const listen = init.listen ?? ['/ip4/127.0.0.1/tcp/0']
  const announce = init.announce ?? []
  for (const a of [...listen, ...announce]) {
    try { multiaddr(a) } catch (err) { throw new UsageError(`bad listen/announce address "${a}": ${(err as Error).message}`) }
  }
  const swarmKey = init.swarmKey ?? processNetwork.swarmKey
  const useQuic = init.quic ?? swarmKey == null
  if (useQuic && swarmKey != null) throw new UsageError('QUIC cannot be used in a private swarm: it skips the swarm key check (listen on TCP only)')
  const quicListen = listen.filter(isQuicAddr)
  if (!useQuic && quicListen.length > 0) {
    throw new UsageError(`cannot listen on ${quicListen.join(', ')}: QUIC is off${swarmKey != null ? ' in a private swarm (it would skip the swarm key check)' : ''}`)
  }
  if (init.dhtMode !== 'server' && init.dhtMode !== 'client') throw new Error(`dhtMode must be 'server' or 'client', got ${JSON.stringify(init.dhtMode)}`)
  const validityMs = init.providerValidityMs ?? DEFAULT_PROVIDER_VALIDITY_MS
  const peerAddresses = init.peerAddresses ?? 'all'
  const onMismatch = init.onSwarmKeyMismatch ?? processNetwork.onSwarmKeyMismatch
  const resolver = createResolver({ server: init.dnsResolver ?? processNetwork.dnsResolver })
  // a peer's loopback address means this machine to us: worth keeping only when our peers all run here
  const keepLoopback = listen.length === 0 || onlyLoopback(listen)

  const transports: NonNullable<Libp2pOptions['transports']> = [tcp()]
  if (useQuic) transports.push(quic())
  const stun = init.stun ?? processNetwork.stun ?? []
  const viaRelays = init.webrtc === true || (init.dialRelayed ?? processNetwork.dialRelayed) === true
  if (viaRelays) {
    // no STUN/TURN unless given: the defaults are public Internet servers, and a LAN swarm may
    // be offline; the relay transport carries WebRTC's signalling
    // imported only here: WebRTC's native library and modules cost a node ~10 MiB of RSS
    const { webRTC } = await import('@libp2p/webrtc')
    transports.push(webRTC({ rtcConfiguration: { iceServers: stun.map(urls => ({ urls })) } }), circuitRelayTransport())
  }
  const listenAll = init.webrtc === true ? [...listen, '/p2p-circuit', '/webrtc'] : listen

  const reputation = new ReputationValidator()
  const node = await createLibp2p({
    privateKey: init.privateKey,
    ...(init.logger != null ? { logger: init.logger } : {}),
    // loopback and link-local addresses never reach remote peers (unless loopback is all we have)
    addresses: { listen: listenAll, ...(announce.length > 0 ? { announce } : {}), ...(init.appendAnnounce != null ? { appendAnnounce: init.appendAnnounce } : {}), announceFilter: announceable },
    transports,
    // PLEXUS_LINK_DELAY_MS (benchmarks only) delays every byte sent: link-delay.ts
    ...withLinkDelay(swarmKey != null ? { connectionProtector: swarmKeyProtector(swarmKey, onMismatch) } : {}),
    connectionEncrypters: [noise()],
    // a client opens many streams right after dialing; the default (10) resets the connection
    streamMuxers: [yamux({ maxEarlyStreams: 1024 })],
    connectionManager: {
      // per-IP inbound rate limit on: libp2p's 5 a second is tight for peers behind one NAT,
      // so 16; a node listening on loopback alone (a local swarm, the tests) exempts loopback,
      // where every peer shares one address, and nothing else
      inboundConnectionThreshold: INBOUND_CONNECTIONS_PER_HOST,
      maxIncomingPendingConnections: 128,
      ...(keepLoopback ? { allow: ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128'] } : {})
    },
    // liveness.ts instead (a frozen peer dropped in ~3 s, a stall of this process forgiven),
    // unless a caller tunes libp2p's own monitor
    connectionMonitor: init.connectionMonitor ?? { enabled: false },
    services: {
      identify: identify(),
      // the liveness pings (liveness.ts) use this protocol on every connection; with ping's
      // default of one outbound stream, a ping of our own (the dashboard's latency) that met one
      // was refused as too many streams
      ping: ping({ maxOutboundStreams: 2, maxInboundStreams: 4 }),
      ...(init.connectionMonitor == null ? { liveness: peerLiveness() } : {}),
      plexus: nodeServices({ network: { resolver, ...(swarmKey != null ? { swarmKey } : {}) }, reputation, budget: { maxBytes: init.maxBufferedBytes } }),
      ...(init.relayServer === true ? { relay: circuitRelayServer(RELAY_LIMITS) } : {}),
      // a relayed connection becomes a direct one when either side has a public address the other
      // can dial (the NATed side dials back); two NATed peers meet over WebRTC (ICE) instead
      ...(viaRelays ? { dcutr: dcutr() } : {}),
      ...(init.upnp === true ? { upnp: portMapping() } : {}),
      // confirms (or refutes) the public addresses peers observe for us before we announce them;
      // as a server it dials back others' addresses, a bounded number at a time
      autoNAT: autoNATv2(),
      dht: kadDHT({
        protocol: dhtProtocol(swarmKey),
        // explicit: left undefined, a node only becomes a server on seeing a public address
        clientMode: init.dhtMode === 'client',
        // the default mapper drops private addresses, which empties the table on a LAN
        peerInfoMapper: peerAddresses === 'private' ? removePublicAddressesMapper : usableAddressesMapper(keepLoopback),
        ...(init.kBucketSize != null ? { kBucketSize: init.kBucketSize } : {}),
        // every query waits for the first self-query, by default started 1 s after start;
        // start it at once (it still waits for the first peer) so a fresh node is usable sooner
        initialQuerySelfInterval: 0,
        // every DHT server must know the namespace, or it refuses the PUT; the validator is what
        // makes peers refuse forged reputation records
        // (with memory: a replay of an older record is refused, reputation.ts)
        validators: { [REPUTATION_NAMESPACE]: reputation.validate },
        selectors: { [REPUTATION_NAMESPACE]: reputationSelector },
        reprovide: {
          validity: validityMs,
          threshold: Math.floor(validityMs / 3),
          interval: Math.min(PROVIDER_CLEANUP_INTERVAL_MS, validityMs)
        }
      })
    }
  })
  return node as PlexusNode
}

/** Peers' addresses minus link-local ones, and minus loopback ones unless our peers all run here. */
function usableAddressesMapper (keepLoopback: boolean): (peer: PeerInfo) => PeerInfo {
  return (peer) => passthroughMapper({
    ...peer,
    multiaddrs: peer.multiaddrs.filter(a => !isLinkLocalAddr(a) && (keepLoopback || !isLoopbackAddr(a)))
  })
}

/** What a relay spends on others, at most: reservations, relayed streams per connection, setup time. */
export const RELAY_LIMITS = {
  reservations: { maxReservations: 128, applyDefaultLimit: false },
  maxInboundHopStreams: 32,
  maxOutboundStopStreams: 64,
  hopTimeout: 30_000
}

/** Peers in the DHT routing table (0 until a DHT server has been reached). */
export function dhtPeerCount (node: PlexusNode): number {
  // the KadDHT interface hides the routing table; the implementation has it
  return (node.services.dht as unknown as { routingTable?: { size?: number } }).routingTable?.size ?? 0
}
