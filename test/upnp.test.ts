// UPnP port mapping over real networks on one machine: a home router in a network namespace runs
// miniupnpd; a server behind it asks for its ports and announces the router's public address,
// and a client in another home dials it there directly. Needs root, iproute2, iptables and
// miniupnpd (nftables backend); without them the suite fails and says why.
import assert from 'node:assert/strict'
import { NetnsTopology, netnsUnavailable } from './support/netns.ts'
import { miniupnpdUnavailable, startMiniupnpd } from './support/miniupnpd.ts'
import type { Miniupnpd } from './support/miniupnpd.ts'
import { hopKind, runIn, startIn } from './support/netns-nodes.ts'
import { fixtureDir, golden } from './support/fixtures.ts'
import { CLIENT_BIN } from '../scripts/lib/local-swarm.ts'
import { RELAY_WAIT_MS } from '@plexus/p2p'

const PROBE = new URL('./support/hop-probe.ts', import.meta.url).pathname
const SETTLE = new URL('./support/settle-probe.ts', import.meta.url).pathname

/**
 * A public bootstrap relay (7.7.7.1); home 1 (7.7.7.11, 192.168.1.0/24) behind a router that
 * maps ports (miniupnpd); home 2 (7.7.7.12) behind one that does not; the client's home 3 (7.7.7.13).
 */
async function homes (topo: NetnsTopology): Promise<{ upnp: Miniupnpd, bootstrap: string }> {
  topo.addSwitch('net')
  topo.addHost('pub', 'net', '7.7.7.1/24')
  for (const [h, wan, lan] of [['h1', '7.7.7.11', '192.168.1'], ['h2', '7.7.7.12', '192.168.2'], ['h3', '7.7.7.13', '192.168.3']] as const) {
    topo.addSwitch(h)
    topo.addRouter(`${h}r`, { switch: 'net', cidr: `${wan}/24` }, { switch: h, cidr: `${lan}.1/24` }, 'cone')
    topo.addHost(`${h}m`, h, `${lan}.2/24`, `${lan}.1`)
  }
  const upnp = await startMiniupnpd(topo, 'h1r', '192.168.1.0/24')
  const boot = await startIn(topo, 'pub', ['bootstrap', '--key', `/tmp/${topo.prefix}-bootstrap.key`])
  return { upnp, bootstrap: boot.ready.addrs[0] }
}

/** How a client in home 3 connects to `peer`: { via, addr } (hop-probe.ts). */
async function probe (topo: NetnsTopology, bootstrap: string, peer: string): Promise<{ via?: string, addr?: string, error?: string }> {
  const r = await runIn(topo, 'h3m', [PROBE, bootstrap, '', peer], 120_000)
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}')[peer] ?? {}
}

describe('UPnP port mapping: network namespaces (needs root and miniupnpd)', function () {
  this.timeout(600_000)
  let topo: NetnsTopology | undefined

  before(function () {
    const why = netnsUnavailable() ?? miniupnpdUnavailable()
    if (why != null) throw new Error(`UPnP tests cannot run here: ${why}`)
  })

  afterEach(async () => {
    const prefix = topo?.prefix
    await topo?.destroy()
    topo = undefined
    if (prefix != null) assert.deepEqual(NetnsTopology.leftovers(prefix), [], 'namespaces left behind')
  })

  it('a server behind a UPnP router announces the mapped public address; a client in another home reaches it directly and generates the model\'s tokens', async () => {
    topo = new NetnsTopology('pu')
    const { upnp, bootstrap } = await homes(topo)
    const model = fixtureDir('tiny-llama')
    const g = golden('tiny-llama')
    // nothing but --bootstrap and --model: UPnP is on by default for a server on a private address
    const s = await startIn(topo, 'h1m', ['join', '--bootstrap', bootstrap, '--model', model], 120_000, { ...process.env, DEBUG: 'libp2p:upnp-nat*' })
    const id = s.ready.peerId as string
    console.log(`      ready after ${s.ms} ms: reachable ${s.ready.reachable}, mapped ${JSON.stringify(s.ready.mapped)}\n      addrs ${JSON.stringify(s.ready.addrs)}`)
    const created = s.stderr().match(/created mapping of .*/g) ?? []
    console.log(`      upnp-nat: ${created.join('; ')}`)
    assert.equal(s.ready.reachable, 'yes', s.stderr().slice(-4000))
    assert.deepEqual([...s.ready.mapped].sort(), ['/ip4/7.7.7.11/tcp/31337', '/ip4/7.7.7.11/udp/31337/quic-v1'], 'the router forwards both listen ports, TCP and QUIC')
    assert.ok(s.ready.addrs.includes(`/ip4/7.7.7.11/tcp/31337/p2p/${id}`), `the ready line lists the mapped address: ${s.ready.addrs.join(' ')}`)
    // the router holds the mapping: a DNAT rule from its public side to the server
    const rules = upnp.rules()
    assert.match(rules, /iif "wan" .*dport 31337 dnat ip to 192\.168\.1\.2:31337/, rules)

    // a client behind another NAT: its connection to the server goes to the router's public address
    const hop = await probe(topo, bootstrap, id)
    console.log(`      hop from home 3: ${hop.via ?? 'failed'} (${hop.addr ?? hop.error})`)
    assert.equal(hop.via, 'direct', JSON.stringify(hop))
    assert.ok(hop.addr?.startsWith('/ip4/7.7.7.11/') === true && !hop.addr.includes('/p2p-circuit'), `dialled the mapped address: ${hop.addr}`)

    const r = await runIn(topo, 'h3m', [CLIENT_BIN, 'generate', '--bootstrap', bootstrap, '--model', model, '--token-ids', g.prompt_ids.join(','),
      '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'], 150_000, { DEBUG: 'libp2p:connection-manager:dial-queue,libp2p:*:circuit-relay:connection:*' })
    assert.equal(r.code, 0, `${r.stderr}\n--- server:\n${s.stderr().slice(-3000)}`)
    const out = JSON.parse(r.stdout)
    assert.deepEqual(out.token_ids, g.greedy_new_ids)
    assert.deepEqual(out.route.map((h: { peer: string }) => h.peer), [id])
    // the client's connections to the server, from libp2p's logs: direct ones to the mapped address only
    const made = [...r.stderr.matchAll(/dial to (\S+) succeeded|outbound relayed connection established to (\S+)/g)]
      .map(m => m[1] ?? `/p2p-circuit/p2p/${m[2]}`).filter(a => a.endsWith(`/p2p/${id}`))
    console.log(`      generate: connections to the server: ${made.join(', ')}`)
    assert.ok(made.length > 0, r.stderr.slice(-3000))
    for (const a of made) {
      assert.equal(hopKind(a), 'direct', a)
      assert.ok(a.startsWith('/ip4/7.7.7.11/'), a)
    }
  })

  it('--no-upnp leaves the router alone, and behind a router without UPnP the search ends within the ready line\'s wait: both servers are reached through the relay', async () => {
    topo = new NetnsTopology('pv')
    const { upnp, bootstrap } = await homes(topo)
    const model = fixtureDir('tiny-llama')
    const [off, none] = await Promise.all([
      startIn(topo, 'h1m', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '0:2', '--no-upnp']),
      startIn(topo, 'h2m', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '2:3'])
    ])
    console.log(`      --no-upnp behind the UPnP router: ready after ${off.ms} ms, reachable ${off.ready.reachable}\n      UPnP on behind a router without it: ready after ${none.ms} ms, reachable ${none.ready.reachable}`)
    for (const [s, wan] of [[off, '7.7.7.11'], [none, '7.7.7.12']] as const) {
      assert.equal(s.ready.reachable, 'relayed', s.stderr().slice(-3000))
      assert.equal(s.ready.mapped, undefined)
      assert.ok(!s.ready.addrs.some((a: string) => a.startsWith(`/ip4/${wan}/`)), s.ready.addrs.join(' '))
      assert.ok(s.ready.addrs.some((a: string) => a.startsWith(`${bootstrap}/p2p-circuit/`)), s.ready.addrs.join(' '))
    }
    // what the ready line waits for behind a router that never answers: the search (3 s), not more
    const settle = await runIn(topo, 'h2m', [SETTLE, bootstrap], 60_000)
    assert.equal(settle.code, 0, settle.stderr)
    const settled = JSON.parse(settle.stdout.trim().split('\n').at(-1) ?? '{}')
    console.log(`      behind a router without UPnP, reachability settled in ${settled.settledMs} ms: ${settled.reachable}, search ${settled.upnp}`)
    assert.deepEqual([settled.reachable, settled.upnp, settled.mapped], ['relayed', 'none', []])
    assert.ok(settled.settledMs < RELAY_WAIT_MS, `settled in ${settled.settledMs} ms`)
    assert.doesNotMatch(upnp.rules(), /dnat/, 'no mapping on the router')
    assert.doesNotMatch(upnp.log(), /AddAnyPortMapping|AddPortMapping/, 'nobody asked the router for one')
    for (const s of [off, none]) {
      const hop = await probe(topo, bootstrap, s.ready.peerId)
      console.log(`      hop from home 3: ${hop.via ?? 'failed'} (${hop.addr ?? hop.error})`)
      assert.equal(hop.via, 'relayed', JSON.stringify(hop))
    }
  })
})
