// A home router that maps ports on request (UPnP IGD and NAT-PMP): miniupnpd, run in the
// foreground in a NetnsTopology router's namespace with a configuration of its own. Its nftables
// backend adds each mapping to a table made here: a DNAT rule from the router's wan address, and
// an accept rule past the router's firewall, which drops any other new connection from outside.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { NetnsTopology } from './netns.ts'

/** Why miniupnpd cannot run here, or undefined when it can. */
export function miniupnpdUnavailable (): string | undefined {
  let version: string
  try {
    version = execFileSync('miniupnpd', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const out = `${(err as { stdout?: string }).stdout ?? ''}${(err as { stderr?: string }).stderr ?? ''}`
    if (!/miniupnpd/.test(out)) return 'needs miniupnpd (Debian package miniupnpd) to be installed'
    version = out
  }
  if (!/nftables/.test(version)) return `needs miniupnpd's nftables backend (Debian package miniupnpd-nftables); this one says: ${version.trim()}`
  try { execFileSync('nft', ['--version'], { stdio: 'ignore' }) } catch { return 'needs nft (Debian package nftables)' }
  return undefined
}

export interface Miniupnpd {
  /** The rules of its table now (`nft list table`): one DNAT rule per mapping. */
  rules: () => string
  /** What it printed (its debug log). */
  log: () => string
}

/** The table miniupnpd keeps its rules in (the router's own NAT is iptables', in other tables). */
const TABLE = 'miniupnpd'

/**
 * Starts miniupnpd on router `name` of `topo` (made with addRouter: interfaces `wan` and `lan`),
 * mapping ports for hosts of `lanSubnet` (`192.168.1.0/24`) only, each to its own address
 * (secure mode). Resolves once it listens; destroy() of the topology stops it.
 */
export async function startMiniupnpd (topo: NetnsTopology, name: string, lanSubnet: string): Promise<Miniupnpd> {
  const dir = mkdtempSync(join(tmpdir(), `${topo.prefix}-upnp-`))
  writeFileSync(join(dir, 'tables.nft'), `table inet ${TABLE} {
  chain forward_miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump forward_miniupnpd
    iif "wan" ct state new drop
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}
`)
  topo.run(name, 'nft', ['-f', join(dir, 'tables.nft')])
  writeFileSync(join(dir, 'miniupnpd.conf'), [
    'ext_ifname=wan',
    'listening_ip=lan',
    'http_port=5000',
    'enable_upnp=yes',
    'enable_natpmp=yes',
    // a host may map ports to itself only
    'secure_mode=yes',
    'system_uptime=yes',
    `uuid=${randomUUID()}`,
    `lease_file=${join(dir, 'leases')}`,
    `upnp_table_name=${TABLE}`,
    `upnp_nat_table_name=${TABLE}`,
    'upnp_forward_chain=forward_miniupnpd',
    'upnp_nat_chain=prerouting_miniupnpd',
    'upnp_nat_postrouting_chain=postrouting_miniupnpd',
    `allow 1024-65535 ${lanSubnet} 1024-65535`,
    'deny 0-65535 0.0.0.0/0 0-65535',
    ''
  ].join('\n'))
  const child = topo.spawn(name, 'miniupnpd', ['-d', '-f', join(dir, 'miniupnpd.conf'), '-P', join(dir, 'miniupnpd.pid')])
  child.once('exit', () => { rmSync(dir, { recursive: true, force: true }) })
  let log = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`miniupnpd on ${name}: not listening within 10 s:\n${log}`)) }, 10_000)
    const onData = (d: Buffer): void => {
      log += d.toString()
      if (/HTTP listening on port/.test(log)) { clearTimeout(timer); resolve() }
    }
    child.stdout!.on('data', onData)
    child.stderr!.on('data', onData)
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`miniupnpd on ${name} exited (${code}):\n${log}`)) })
  })
  return {
    rules: () => topo.run(name, 'nft', ['list', 'table', 'inet', TABLE]),
    log: () => log
  }
}
