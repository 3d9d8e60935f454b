// Bootstrap addresses by name: /dnsaddr/NAME (TXT records at _dnsaddr.NAME, each
// "dnsaddr=<multiaddr ending in /p2p/<peer id>>"), /dns4, /dns6 and /dns, resolved before dialing
// through one resolver with short deadlines (c-ares' defaults wait ~25 s on a silent server).
import { Resolver } from 'node:dns/promises'
import { isIP } from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import { PlexusError } from '@plexus/runtime'

/** Nested /dnsaddr records followed at most this deep, and addresses taken from one name at most. */
const MAX_DNSADDR_DEPTH = 4
const MAX_RESOLVED_ADDRS = 32

/** A bootstrap name that does not resolve to a usable address; `code` says why. */
export class DnsAddrError extends PlexusError {
  // a bad resolver is a setting to fix; a name that does not resolve, a network condition
  constructor (message: string, code: string) { super(code, message, { httpStatus: code === 'ERR_BAD_DNS_RESOLVER' ? 400 : 503 }); this.name = 'DnsAddrError' }
}

export interface DnsResolverOptions {
  /** A DNS server to ask instead of the system's: `IP` or `IP:PORT` (`[IPv6]:PORT`). */
  server?: string
  /** Per-query timeout, ms (default 2000) and tries (default 2). */
  timeoutMs?: number
  tries?: number
}

/** Checks `--dns-resolver`: an IP address with an optional port. */
export function checkDnsServer (server: string): string {
  const m = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(server) ?? /^([0-9.]+)(?::(\d+))?$/.exec(server) ?? /^([0-9a-fA-F:]+)()$/.exec(server)
  const port = m?.[2] != null && m[2] !== '' ? Number(m[2]) : 53
  if (m == null || isIP(m[1]) === 0 || !(port >= 1 && port <= 65535)) {
    throw new DnsAddrError(`bad DNS resolver "${server}": expected IP or IP:PORT (IPv6 as [IP]:PORT)`, 'ERR_BAD_DNS_RESOLVER')
  }
  return server
}

export function createResolver (opts: DnsResolverOptions = {}): Resolver {
  const resolver = new Resolver({ timeout: opts.timeoutMs ?? 2000, tries: opts.tries ?? 2 })
  if (opts.server != null) resolver.setServers([checkDnsServer(opts.server)])
  return resolver
}

const DNS_NAMES = new Set(['dnsaddr', 'dns', 'dns4', 'dns6'])

/** True when the address starts with a DNS name that must be resolved before dialing. */
export function isDnsAddr (ma: Multiaddr): boolean {
  return DNS_NAMES.has(ma.getComponents()[0]?.name ?? '')
}

/**
 * The IP addresses an address names: itself when it starts with an IP; for /dns4, /dns6, /dns
 * the host's A/AAAA records with the rest of the address kept; for /dnsaddr the TXT records'
 * addresses (only those of the peer id that follows, if one does), nested names followed.
 */
export async function resolveAddr (ma: Multiaddr, resolver: Resolver, signal?: AbortSignal, depth = 0): Promise<Multiaddr[]> {
  const [first, ...rest] = ma.getComponents()
  if (first == null || !DNS_NAMES.has(first.name)) return [ma]
  const host = first.value ?? ''
  const tail = rest.map(c => `/${c.name}${c.value != null ? `/${c.value}` : ''}`).join('')
  const cancel = (): void => { resolver.cancel() }
  signal?.addEventListener('abort', cancel, { once: true })
  try {
    if (first.name !== 'dnsaddr') {
      const out: Multiaddr[] = []
      if (first.name !== 'dns6') for (const ip of await lookup(() => resolver.resolve4(host), host, first.name === 'dns')) out.push(multiaddr(`/ip4/${ip}${tail}`))
      if (first.name !== 'dns4') for (const ip of await lookup(() => resolver.resolve6(host), host, first.name === 'dns')) out.push(multiaddr(`/ip6/${ip}${tail}`))
      if (out.length === 0) throw new DnsAddrError(`${host} has no ${first.name === 'dns4' ? 'A' : first.name === 'dns6' ? 'AAAA' : 'A or AAAA'} record`, 'ERR_DNS_NO_RECORD')
      return out.slice(0, MAX_RESOLVED_ADDRS)
    }
    if (depth >= MAX_DNSADDR_DEPTH) throw new DnsAddrError(`_dnsaddr.${host}: records nested deeper than ${MAX_DNSADDR_DEPTH}`, 'ERR_DNSADDR_TOO_DEEP')
    const records = await lookup(() => resolver.resolveTxt(`_dnsaddr.${host}`), `_dnsaddr.${host}`, false)
    const wantPeer = rest.find(c => c.name === 'p2p')?.value
    const out: Multiaddr[] = []
    for (const chunks of records) {
      const text = chunks.join('')
      if (!text.startsWith('dnsaddr=')) continue
      let target: Multiaddr
      try { target = multiaddr(text.slice('dnsaddr='.length)) } catch { continue }
      const peer = target.getComponents().findLast(c => c.name === 'p2p')?.value
      if (wantPeer != null && peer !== wantPeer) continue
      for (const a of await resolveAddr(target, resolver, signal, depth + 1)) {
        if (out.length < MAX_RESOLVED_ADDRS) out.push(a)
      }
    }
    if (out.length === 0) throw new DnsAddrError(`_dnsaddr.${host} has no dnsaddr= record${wantPeer != null ? ` for ${wantPeer}` : ''}`, 'ERR_DNSADDR_NO_RECORD')
    return out
  } catch (err) {
    if (signal?.aborted === true) throw signal.reason
    throw err
  } finally {
    signal?.removeEventListener('abort', cancel)
  }
}

/** A lookup's records; "no such record" is empty when `optional` (a /dns host with only A or only AAAA). */
async function lookup<T> (query: () => Promise<T[]>, name: string, optional: boolean): Promise<T[]> {
  try {
    return await query()
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? ''
    if (optional && (code === 'ENODATA' || code === 'ENOTFOUND')) return []
    throw new DnsAddrError(`DNS lookup of ${name} failed (${code !== '' ? code : (err as Error).message})`, code !== '' ? `ERR_DNS_${code}` : 'ERR_DNS')
  }
}

/** The TXT records that make `/dnsaddr/NAME` resolve to these addresses (each ending in /p2p/<id>). */
export function dnsaddrRecords (name: string, addrs: string[]): string[] {
  return addrs.map(a => `_dnsaddr.${name}. TXT "dnsaddr=${a}"`)
}
