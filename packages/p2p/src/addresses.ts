// Which addresses a node listens on by default, and which of its addresses it tells others about.
import { createSocket } from 'node:dgram'
import { createServer } from 'node:net'
import { networkInterfaces } from 'node:os'
import { isLinkLocal, isLoopback, isPrivate } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'

/** The port a node listens on unless told otherwise (another free port when it is taken). */
export const DEFAULT_PORT = 31337

/** Every interface, IPv4 and IPv6, on `port`. */
export function allInterfaces (port: number): string[] {
  return [`/ip4/0.0.0.0/tcp/${port}`, `/ip6/::/tcp/${port}`]
}

/**
 * QUIC (`/udp/P/quic-v1`) beside every TCP listen address, on the same host and port: one UDP
 * socket per address, which NATs map like any UDP flow.
 */
export function withQuic (listen: string[]): string[] {
  const quic = listen.map(a => a.match(/^(\/ip[46]\/[^/]+)\/tcp\/(\d+)$/)).filter(m => m != null).map(m => `${m[1]}/udp/${m[2]}/quic-v1`)
  return [...listen, ...quic.filter(q => !listen.includes(q))]
}

/** True for a QUIC address (`.../udp/P/quic-v1`). */
export function isQuicAddr (addr: string): boolean {
  return /\/udp\/\d+\/quic-v1(\/|$)/.test(addr)
}

/**
 * The default listen addresses: every interface on DEFAULT_PORT, or on a free port the system
 * picks when DEFAULT_PORT is taken (a second node on the same machine). `port` is the one chosen,
 * free for TCP and for UDP (QUIC listens on it too: withQuic).
 */
export async function defaultListen (port = DEFAULT_PORT): Promise<{ listen: string[], port: number }> {
  const free = await portFree('0.0.0.0', port) && await portFree('::', port) && await udpPortFree('0.0.0.0', port) && await udpPortFree('::', port)
  const chosen = free ? port : await anyFreePort()
  return { listen: allInterfaces(chosen), port: chosen }
}

/** A port free on every interface now (the system's choice for IPv4, checked for IPv6). */
async function anyFreePort (): Promise<number> {
  for (let i = 0; i < 8; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen({ host: '0.0.0.0', port: 0 }, () => {
        const p = (server.address() as { port: number }).port
        server.close(() => { resolve(p) })
      })
    })
    if (await portFree('::', port) && await udpPortFree('0.0.0.0', port) && await udpPortFree('::', port)) return port
  }
  return 0
}

/**
 * This machine's public interface addresses on the ports of wildcard listen addresses
 * (`/ip4/0.0.0.0/tcp/31337` → `/ip4/<each public IPv4>/tcp/31337`): what a node that is known
 * to be reachable, such as a bootstrap peer, announces without waiting for confirmation.
 */
export function publicInterfaceAddrs (listen: string[]): string[] {
  const out: string[] = []
  for (const a of listen) {
    const [, proto, host, transport, port, ...rest] = a.split('/')
    if ((host !== '0.0.0.0' && host !== '::') || port == null || port === '0') continue
    const family = proto === 'ip4' ? 'IPv4' : 'IPv6'
    for (const list of Object.values(networkInterfaces())) {
      for (const ni of list ?? []) {
        if (ni.family !== family || ni.internal) continue
        // keep what follows the port (`/quic-v1`)
        const ma = multiaddr(`/${proto}/${ni.address}/${transport}/${port}${rest.length > 0 ? `/${rest.join('/')}` : ''}`)
        if (!isPrivate(ma) && !isLinkLocalAddr(ma)) out.push(ma.toString())
      }
    }
  }
  return out
}

/** True when a TCP listener can take `port` on `host` now (an unsupported address family counts as free). */
async function portFree (host: string, port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const server = createServer()
    server.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code !== 'EADDRINUSE' && err.code !== 'EACCES') })
    server.listen({ host, port, ipv6Only: host === '::', exclusive: true }, () => { server.close(() => { resolve(true) }) })
  })
}

/** True when a UDP socket can take `port` on `host` now (an unsupported address family counts as free). */
async function udpPortFree (host: string, port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = createSocket({ type: host === '::' ? 'udp6' : 'udp4', ipv6Only: host === '::' })
    socket.once('error', (err: NodeJS.ErrnoException) => { socket.close(); resolve(err.code !== 'EADDRINUSE' && err.code !== 'EACCES') })
    socket.bind({ address: host, port, exclusive: true }, () => { socket.close(() => { resolve(true) }) })
  })
}

/** The first IP component of an address (`/ip4/...`, `/ip6/...`), if it has one. */
function hostOf (ma: Multiaddr): { name: string, value: string } | undefined {
  const first = ma.getComponents()[0]
  return first != null && (first.name === 'ip4' || first.name === 'ip6') && first.value != null ? { name: first.name, value: first.value } : undefined
}

/** Link-local (169.254/16, fe80::/10): meaningless off the link, and to peers elsewhere. */
export function isLinkLocalAddr (ma: Multiaddr): boolean {
  return hostOf(ma) != null && isLinkLocal(ma)
}

export function isLoopbackAddr (ma: Multiaddr): boolean {
  return hostOf(ma) != null && isLoopback(ma)
}

/**
 * The addresses worth telling other peers: never link-local ones, and loopback ones only when
 * the node has nothing else (it listens on loopback only, so its peers are on this machine).
 * Relayed addresses are judged by the relay's address they start with.
 */
export function announceable (addrs: Multiaddr[]): Multiaddr[] {
  const usable = oneRelayPath(addrs.filter(a => !isLinkLocalAddr(a)))
  const beyondLoopback = usable.filter(a => !isLoopbackAddr(a))
  return beyondLoopback.length > 0 ? beyondLoopback : usable
}

/**
 * One relayed address per relay and kind (plain, WebRTC), over TCP where the relay has it: a
 * client dials them one after another, and a WebRTC attempt that cannot succeed (a symmetric
 * NAT) costs the full per-address timeout (6 s) each time.
 */
function oneRelayPath (addrs: Multiaddr[]): Multiaddr[] {
  const best = new Map<string, Multiaddr>()
  for (const a of addrs) {
    const s = a.toString()
    const at = s.indexOf('/p2p-circuit')
    if (at < 0) continue
    const relay = s.slice(0, at).match(/\/p2p\/([^/]+)$/)?.[1] ?? s.slice(0, at)
    const key = `${relay}${s.slice(at)}`
    const kept = best.get(key)
    if (kept == null || (!kept.toString().includes('/tcp/') && s.slice(0, at).includes('/tcp/'))) best.set(key, a)
  }
  return addrs.filter(a => !a.toString().includes('/p2p-circuit') || [...best.values()].includes(a))
}

/** True when every address given is a loopback one (a node whose peers all run on this machine). */
export function onlyLoopback (addrs: string[]): boolean {
  if (addrs.length === 0) return false
  return addrs.every(a => {
    const ma = multiaddr(a)
    return isLoopbackAddr(ma)
  })
}
