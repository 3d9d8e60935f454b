// The network flags every plexus-node and plexus-client command shares: --listen, --announce,
// --swarm-key, --dns-resolver; and what the tools print about them.
import { defaultListen, onlyLoopback, publicInterfaceAddrs, withQuic } from './addresses.ts'
import { isPublicHost } from './reachability.ts'
import { checkDnsServer, dnsaddrRecords } from './dnsaddr.ts'
import { readSwarmKey, writeSwarmKey } from './swarm-key.ts'
import type { SwarmKey, SwarmKeyMismatch } from './swarm-key.ts'
import type { FlagValues, nodeNetworkFlags } from './cli-options.ts'
import { UsageError } from '@plexus/runtime'

/** The network flags as parsed (cli-options.ts nodeNetworkFlags). */
export type NetworkArgs = FlagValues<typeof nodeNetworkFlags>

export interface NetworkOptions {
  listen: string[]
  announce?: string[]
  appendAnnounce?: string[]
  relayServer: boolean
  webrtc: boolean
  upnp: boolean
  stun?: string[]
  swarmKey?: SwarmKey
  dnsResolver?: string
  onSwarmKeyMismatch?: (m: SwarmKeyMismatch) => void
}

/** Remote addresses whose mismatch was reported lately (one line per address per minute, at most this many remembered). */
const MAX_REPORTED = 256
const REPORT_EVERY_MS = 60_000

/**
 * One stderr line per peer that fails the swarm key check, at most once a minute per address
 * (a peer retrying must not flood the log).
 */
export function reportMismatches (tool: string, write: (line: string) => void = line => { process.stderr.write(line) }): (m: SwarmKeyMismatch) => void {
  const reported = new Map<string, number>()
  return (m) => {
    const host = m.remoteAddr.split('/').slice(0, 3).join('/')
    const now = Date.now()
    if ((reported.get(host) ?? -Infinity) > now - REPORT_EVERY_MS) return
    if (reported.size >= MAX_REPORTED) reported.delete(reported.keys().next().value as string)
    reported.set(host, now)
    write(m.direction === 'inbound'
      ? `${tool}: refused a connection from ${m.remoteAddr}: swarm key mismatch (the peer holds another --swarm-key, or none)\n`
      : `${tool}: swarm key mismatch with ${m.remoteAddr}: the peer holds another --swarm-key, or none\n`)
  }
}

/**
 * The node options the flags give: `listen` defaults to every interface on port 31337 (or a
 * free one), TCP and QUIC. A bootstrap peer must be reachable: it announces its public interface addresses
 * at once and relays for others. A server with no public address (behind NAT, as far as it
 * knows) reserves a slot on relays and takes WebRTC connections, which its relay signals, and
 * asks its router to forward its ports (UPnP).
 */
export async function networkOptions (args: NetworkArgs, role: 'bootstrap' | 'join' = 'join', tool = 'plexus-node'): Promise<NetworkOptions> {
  const swarmKey = args.swarmKey != null ? await readSwarmKey(args.swarmKey) : undefined
  const dnsResolver = args.dnsResolver != null ? checkDnsServer(args.dnsResolver) : undefined
  for (const s of args.stun ?? []) if (!/^stun:[^\s/]+$/.test(s)) throw new UsageError(`bad --stun ${s}: expected stun:HOST:PORT`)
  // QUIC beside TCP on the same port, except in a private swarm (QUIC skips the swarm key check)
  const listen = args.listen ?? (swarmKey == null ? withQuic((await defaultListen()).listen) : (await defaultListen()).listen)
  const announce = args.announce != null && args.announce.length > 0 ? args.announce : undefined
  const appendAnnounce = role === 'bootstrap' && announce == null ? publicInterfaceAddrs(listen) : []
  const ours = announce ?? [...listen, ...appendAnnounce]
  const isPublic = ours.some(a => { const [, proto, host] = a.split('/'); return (proto === 'ip4' || proto === 'ip6') && host !== '0.0.0.0' && host !== '::' && isPublicHost(host) }) ||
    publicInterfaceAddrs(listen).length > 0
  return {
    listen,
    ...(announce != null ? { announce } : {}),
    ...(appendAnnounce.length > 0 ? { appendAnnounce } : {}),
    relayServer: args.relay ?? role === 'bootstrap',
    webrtc: args.webrtc ?? (role === 'join' && !isPublic && !onlyLoopback(listen)),
    // an --announce'd address replaces whatever the router would map
    upnp: args.upnp ?? (role === 'join' && !isPublic && announce == null && !onlyLoopback(listen)),
    ...(args.stun != null && args.stun.length > 0 ? { stun: args.stun } : {}),
    ...(swarmKey != null ? { swarmKey, onSwarmKeyMismatch: reportMismatches(tool) } : {}),
    ...(dnsResolver != null ? { dnsResolver } : {})
  }
}

/** The TXT records to publish so that /dnsaddr/NAME finds these addresses, as lines to print and as data. */
export function bootstrapRecords (name: string, addrs: string[]): { text: string, records: string[] } {
  const host = name.replace(/\.$/, '')
  if (!/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$/.test(host)) {
    throw new UsageError(`bad --dnsaddr ${name}: expected a DNS name such as bootstrap.example.org`)
  }
  const records = dnsaddrRecords(host, addrs)
  const text = records.length > 0
    ? `DNS: publish these TXT records, then join with --bootstrap /dnsaddr/${host}\n${records.map(r => `  ${r}`).join('\n')}`
    : `DNS: this peer has no address other machines can reach yet (listen on a public or LAN address, or give --announce); no TXT records for ${host}`
  return { text, records }
}

/** `plexus-node swarm-key --out FILE`: a new private swarm's key. */
export async function runSwarmKey (args: { out: string }, write: (line: string) => void = line => { process.stdout.write(line) }): Promise<void> {
  const key = await writeSwarmKey(args.out)
  write(`wrote the key of a new private swarm (id ${key.id}) to ${args.out}: give it to every member (--swarm-key ${args.out}); keep it secret\n`)
}
