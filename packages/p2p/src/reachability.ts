// Whether other peers can dial this node, as the ready line and health report it, judged from
// the addresses it announces: libp2p announces a public address of its own only once peers
// confirmed it (AutoNAT v2), its router mapped it (UPnP) or it was given (--announce, a bootstrap
// peer's interfaces).
import { networkInterfaces } from 'node:os'
import type { PlexusNode } from './node.ts'

/**
 * yes: it announces a public address of its own (confirmed by peers through AutoNAT, forwarded by
 * its router over UPnP: portMapped, or given);
 * relayed: none, so it reserved a slot on a relay: peers reach it through the relay, and over
 * WebRTC where the NATs allow a direct path; lan: private addresses only (its own network);
 * local: loopback only (this machine); no: no address at all (it only dials); unknown: not yet known.
 */
export type Reachability = 'yes' | 'relayed' | 'lan' | 'local' | 'no' | 'unknown'

/** IPv4/IPv6 hosts that no peer outside this network can dial. */
const PRIVATE_HOST = [
  /^127\./, /^10\./, /^192\.168\./, /^172\.(1[6-9]|2\d|3[01])\./, /^169\.254\./, /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./, /^0\./,
  /^::1?$/, /^f[cd][0-9a-f]{2}:/i, /^fe[89ab][0-9a-f]:/i
]

export function isPublicHost (host: string): boolean {
  return !PRIVATE_HOST.some(re => re.test(host))
}

/** This node's reachability as far as is known now (from the addresses it announces). */
export function reachability (node: Pick<PlexusNode, 'getMultiaddrs'>): Reachability {
  const addrs = node.getMultiaddrs().map(ma => ma.toString())
  if (addrs.length === 0) return 'no'
  let direct = 0
  let loopback = 0
  for (const a of addrs) {
    const parts = a.split('/')
    // /ip4/HOST/..., /ip6/HOST/...: relayed addresses (p2p-circuit) are not this node's own
    if (parts.includes('p2p-circuit') || (parts[1] !== 'ip4' && parts[1] !== 'ip6')) continue
    if (isPublicHost(parts[2])) return 'yes'
    direct++
    if (/^127\.|^::1$/.test(parts[2])) loopback++
  }
  if (addrs.some(a => a.includes('/p2p-circuit'))) return 'relayed'
  if (direct > 0) return loopback === direct ? 'local' : 'lan'
  return 'unknown'
}

/** How long a node behind NAT waits for its relay reservation before it says it is ready. */
export const RELAY_WAIT_MS = 10_000
/** How much longer it waits for a port mapping its router is making (UPnP). */
export const MAPPING_GRACE_MS = 10_000
/** The protocol a node that accepts relayed connections handles (circuit relay v2 transport). */
const RELAY_STOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/stop'

/** True when this machine has a public interface address (it may be reachable without a relay). */
function hasPublicInterface (): boolean {
  return Object.values(networkInterfaces()).some(list => (list ?? []).some(ni => !ni.internal && isPublicHost(ni.address)))
}

/** The addresses the home router forwards to this node (UPnP, port-mapping.ts): none without a mapping. */
export function portMapped (node: Pick<PlexusNode, 'services'>): string[] {
  return node.services.upnp?.mapped() ?? []
}

/**
 * This node's reachability once it is known, or after `timeoutMs`: a node that reserves relay
 * slots (one without a public address) waits for its reservation, and one on a machine with a
 * public interface address for a peer to confirm it (AutoNAT v2 dials it back), so the ready line
 * lists the addresses others will use, not what the node had a moment before (a second line
 * when they come later would leave the first one wrong for whoever read it). A node that asks
 * its router for a port mapping (UPnP) also waits for the router's answer, or for its search to
 * find none (GATEWAY_SEARCH_MS), within the same `timeoutMs`; for a mapping a router that answered
 * is still making, up to MAPPING_GRACE_MS more. Returns at once when there is
 * nothing to wait for.
 */
export async function settledReachability (node: Pick<PlexusNode, 'getMultiaddrs' | 'getProtocols' | 'addEventListener' | 'removeEventListener' | 'services'>, timeoutMs = RELAY_WAIT_MS): Promise<Reachability> {
  const upnp = node.services.upnp
  // a router that maps ports is worth waiting for while it may still answer
  const mappingPending = (): boolean => upnp != null && (upnp.state === 'searching' || upnp.state === 'mapping')
  const settled = (r: Reachability): boolean => r === 'yes' || r === 'local' || (r === 'relayed' && !mappingPending())
  const waits = node.getProtocols().includes(RELAY_STOP_PROTOCOL) || hasPublicInterface() || mappingPending()
  if (settled(reachability(node)) || !waits) return reachability(node)
  await new Promise<void>(resolve => {
    const done = (): void => {
      clearTimeout(timer)
      node.removeEventListener('self:peer:update', check)
      upnp?.removeEventListener('change', check)
      resolve()
    }
    const check = (): void => { if (settled(reachability(node))) done() }
    // a router that answered maps the ports a few seconds later (upnp-nat waits for the node's
    // addresses to stay put for 5 s): give it once more time, not a router that never answered
    let timer = setTimeout(() => { if (upnp?.state === 'mapping') timer = setTimeout(done, MAPPING_GRACE_MS); else done() }, timeoutMs)
    node.addEventListener('self:peer:update', check)
    upnp?.addEventListener('change', check)
  })
  return reachability(node)
}
