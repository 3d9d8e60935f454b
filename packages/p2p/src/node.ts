import { networkInterfaces } from 'node:os'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, removePublicAddressesMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { isPrivate } from '@libp2p/utils'
import { webRTC } from '@libp2p/webrtc'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { REPUTATION_NAMESPACE, reputationSelector, reputationValidator } from './reputation.ts'
import type { Identify } from '@libp2p/identify'
import type { ConnectionMonitorInit, Libp2pOptions } from 'libp2p'
import type { ComponentLogger, Libp2p, PrivateKey } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import type { Ping } from '@libp2p/ping'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Every Plexus protocol id starts with this, so Plexus peers never mix with public IPFS ones. */
export const PROTOCOL_PREFIX = '/plexus'
export const DHT_PROTOCOL = `${PROTOCOL_PREFIX}/kad/1.0.0`

export type PlexusServices = { identify: Identify, ping: Ping, dht: KadDHT }
export type PlexusNode = Libp2p<PlexusServices>

/** Defaults chosen so a provider record of a vanished server is gone within ~3.5 minutes. */
export const DEFAULT_PROVIDER_VALIDITY_MS = 3 * 60_000
const PROVIDER_CLEANUP_INTERVAL_MS = 30_000

export interface PlexusNodeInit {
  privateKey: PrivateKey
  /** Default `['/ip4/127.0.0.1/tcp/0']`. */
  listen?: string[]
  /** Addresses to advertise instead of the listen addresses (e.g. a port-forwarded one). */
  announce?: string[]
  /** 'server' answers DHT queries and stores records; 'client' only asks. */
  dhtMode: 'server' | 'client'
  /**
   * Adds the WebRTC and circuit-relay transports, for peers behind NAT: such a peer reserves a
   * slot on a relay (a node with `relayServer`), and others reach it through the relay, which
   * also carries the signalling that sets up a direct WebRTC connection. Default false.
   */
  webrtc?: boolean
  /**
   * Relays for NATed peers (circuit relay v2 server, default limits: 128 KiB and 2 min per
   * relayed connection, enough for WebRTC signalling). Give it to nodes with a reachable
   * address, e.g. the bootstrap node. Default false.
   */
  relayServer?: boolean
  /**
   * Which peer addresses the DHT keeps. 'private' (LAN swarm) drops public ones; 'all' keeps
   * every address (mixed swarms). Default: 'private' when every address this node advertises
   * is private/loopback, else 'all'.
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
   * Liveness pings. Default: every 2 s, timeout 1-3 s (adaptive), so a frozen peer is dropped
   * in ~3 s. The price: a node whose event loop stalls for over ~1 s (heavy compute on the main
   * thread, a CPU-starved machine) gets its connections dropped too; relax it there.
   */
  connectionMonitor?: ConnectionMonitorInit
  /** Route libp2p's and Plexus' logs (default: libp2p's `DEBUG=`-controlled logger). */
  logger?: ComponentLogger
}

/** Builds and starts a libp2p node with the Plexus transports, services and DHT settings. */
export async function createPlexusNode (init: PlexusNodeInit): Promise<PlexusNode> {
  const listen = init.listen ?? ['/ip4/127.0.0.1/tcp/0']
  const announce = init.announce ?? []
  for (const a of [...listen, ...announce]) {
    try { multiaddr(a) } catch (err) { throw new Error(`bad listen/announce address "${a}": ${(err as Error).message}`) }
  }
  if (init.dhtMode !== 'server' && init.dhtMode !== 'client') throw new Error(`dhtMode must be 'server' or 'client', got ${JSON.stringify(init.dhtMode)}`)
  const validityMs = init.providerValidityMs ?? DEFAULT_PROVIDER_VALIDITY_MS
  const peerAddresses = init.peerAddresses ?? (advertisesOnlyPrivate(announce.length > 0 ? announce : listen) ? 'private' : 'all')

  const transports: NonNullable<Libp2pOptions['transports']> = [tcp()]
  if (init.webrtc === true) {
    // no STUN/TURN: the defaults are public Internet servers, and a LAN swarm may be offline;
    // the relay transport carries WebRTC's signalling
    transports.push(webRTC({ rtcConfiguration: { iceServers: [] } }), circuitRelayTransport())
  }
  const listenAll = init.webrtc === true ? [...listen, '/p2p-circuit', '/webrtc'] : listen

  const node = await createLibp2p({
    privateKey: init.privateKey,
    ...(init.logger != null ? { logger: init.logger } : {}),
    addresses: { listen: listenAll, ...(announce.length > 0 ? { announce } : {}) },
    transports,
    connectionEncrypters: [noise()],
    // a client opens many streams right after dialing; the default (10) resets the connection
    streamMuxers: [yamux({ maxEarlyStreams: 1024 })],
    connectionManager: {
      // the defaults (5 per second per host, 10 pending) silently refuse peers that share an IP
      inboundConnectionThreshold: 10_000,
      maxIncomingPendingConnections: 1_000
    },
    // notice a frozen (SIGSTOP'd, hung) peer in ~3 s instead of ~15 s
    connectionMonitor: init.connectionMonitor ?? { pingInterval: 2000, pingTimeout: { minTimeout: 1000, maxTimeout: 3000 } },
    services: {
      identify: identify(),
      ping: ping(),
      ...(init.relayServer === true ? { relay: circuitRelayServer({ reservations: { maxReservations: 128 } }) } : {}),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        // explicit: left undefined, a node only becomes a server on seeing a public address
        clientMode: init.dhtMode === 'client',
        // the default mapper drops private addresses, which empties the table on a LAN
        peerInfoMapper: peerAddresses === 'private' ? removePublicAddressesMapper : passthroughMapper,
        ...(init.kBucketSize != null ? { kBucketSize: init.kBucketSize } : {}),
        // every query waits for the first self-query, by default started 1 s after start;
        // start it at once (it still waits for the first peer) so a fresh node is usable sooner
        initialQuerySelfInterval: 0,
        // every DHT server must know the namespace, or it refuses the PUT; the validator is what
        // makes peers refuse forged reputation records
        validators: { [REPUTATION_NAMESPACE]: reputationValidator },
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

/** Peers in the DHT routing table (0 until a DHT server has been reached). */
export function dhtPeerCount (node: PlexusNode): number {
  // the KadDHT interface hides the routing table; the implementation has it
  return (node.services.dht as unknown as { routingTable?: { size?: number } }).routingTable?.size ?? 0
}

/** True when every IP address we would advertise is private or loopback (wildcards expanded). */
function advertisesOnlyPrivate (addrs: string[]): boolean {
  for (const a of addrs) {
    const ma: Multiaddr = multiaddr(a)
    const first = ma.getComponents()[0]
    if (first == null) continue
    if (first.name === 'dns' || first.name === 'dns4' || first.name === 'dns6' || first.name === 'dnsaddr') return false
    if (first.name !== 'ip4' && first.name !== 'ip6') continue
    if (first.value === '0.0.0.0' || first.value === '::') {
      // a wildcard listener advertises every interface address
      const family = first.name === 'ip4' ? 'IPv4' : 'IPv6'
      for (const list of Object.values(networkInterfaces())) {
        for (const ni of list ?? []) {
          if (ni.family !== family || ni.address.startsWith('fe80')) continue
          if (!isPrivate(multiaddr(`/${first.name}/${ni.address}`))) return false
        }
      }
    } else if (!isPrivate(ma)) {
      return false
    }
  }
  return true
}
