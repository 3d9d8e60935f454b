// Port mapping on the home router (UPnP IGD, through @libp2p/upnp-nat): a node behind NAT asks
// the router to forward its listen ports, and announces the router's public address with them,
// so peers dial it directly instead of through a relay. What the ready line needs to know of it:
// whether a router that maps ports was found, and which addresses it maps.
import { serviceCapabilities, start, stop } from '@libp2p/interface'
import { uPnPNAT } from '@libp2p/upnp-nat'
import type { Startable } from '@libp2p/interface'
import type { UPnPNAT, UPnPNATClient, UPnPNATComponents } from '@libp2p/upnp-nat'

/**
 * searching: looking for a router that maps ports (its first search lasts GATEWAY_SEARCH_MS);
 * mapping: found one, asking it (upnp-nat asks once the node's addresses stayed put for 5 s);
 * mapped: it forwards our ports (`mapped()`); none: no router answered (one may still be found
 * later: the search repeats).
 */
export type PortMappingState = 'searching' | 'mapping' | 'mapped' | 'none'

/**
 * How long the first search for a router lasts (ms): a router answers a search within a second
 * (MX 1), and one is sent every second. The search repeats every 5 s until a router answers.
 */
export const GATEWAY_SEARCH_MS = 3_000

/**
 * The `upnp` service of a node (createPlexusNode with `upnp`). A mapping is announced once the
 * router made it and reported a public address of its own (upnp-nat refuses a private one: a
 * second NAT behind the router, a carrier-grade NAT), without waiting for AutoNAT: AutoNAT v2
 * checks an address only when a new peer connects (or once a minute), which would leave the
 * ready line without it. A mapping is leased for an hour and renewed while the node runs; the
 * removal upnp-nat asks for on stop names no protocol, so a router may keep it until the lease ends.
 */
export class PortMapping extends EventTarget implements Startable {
  readonly [Symbol.toStringTag] = '@plexus/port-mapping'
  readonly [serviceCapabilities] = ['@libp2p/nat-traversal']
  private readonly components: UPnPNATComponents
  private readonly upnp: UPnPNAT & Startable
  private found = false
  private searched = false

  constructor (components: UPnPNATComponents) {
    super()
    this.components = components
    this.upnp = uPnPNAT({ autoConfirmAddress: true, initialGatewaySearchTimeout: GATEWAY_SEARCH_MS })(components) as UPnPNAT & Startable
    this.watchSearches(this.upnp.portMappingClient)
  }

  /** Where the mapping stands now; a 'change' event follows every step but 'mapped' (self:peer:update tells that). */
  get state (): PortMappingState {
    if (this.mapped().length > 0) return 'mapped'
    if (this.found) return 'mapping'
    return this.searched ? 'none' : 'searching'
  }

  /** The public addresses the router forwards to this node (`/ip4/PUBLIC/tcp/PORT`, ...), once made. */
  mapped (): string[] {
    return this.components.addressManager.getAddressesWithMetadata()
      .filter(a => a.type === 'ip-mapping' && a.verified)
      .map(a => a.multiaddr.toString())
  }

  async start (): Promise<void> { await start(this.upnp) }
  async stop (): Promise<void> { await stop(this.upnp) }

  /**
   * upnp-nat tells nobody whether its search found a router; its client is the one place that
   * sees the search begin and end, so its findGateways is wrapped to count what it yields.
   */
  private watchSearches (client: UPnPNATClient): void {
    const find = client.findGateways.bind(client)
    client.findGateways = (options) => {
      const self = this
      return (async function * () {
        try {
          for await (const gateway of find(options)) {
            if (!self.found) { self.found = true; self.dispatchEvent(new Event('change')) }
            yield gateway
          }
        } finally {
          if (!self.searched) { self.searched = true; self.dispatchEvent(new Event('change')) }
        }
      })()
    }
  }
}

/** A libp2p service factory: `services: { upnp: portMapping() }`. */
export function portMapping (): (components: UPnPNATComponents) => PortMapping {
  return (components) => new PortMapping(components)
}
