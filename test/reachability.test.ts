// Reachability over real networks on one machine: Linux network namespaces joined by a bridge.
// Needs root; without it (or without iproute2/iptables) the suite fails and says why.
import assert from 'node:assert/strict'
import { NetnsTopology, netnsUnavailable } from './support/netns.ts'
import { hopKind, ownAddrs, runIn, startIn } from './support/netns-nodes.ts'
import { fixtureDir, golden } from './support/fixtures.ts'
import { CLIENT_BIN } from '../scripts/lib/local-swarm.ts'

describe('reachability: network namespaces (needs root)', function () {
  this.timeout(600_000)
  let topo: NetnsTopology | undefined

  before(function () {
    const why = netnsUnavailable()
    if (why != null) throw new Error(`reachability tests cannot run here: ${why}`)
  })

  afterEach(async () => {
    const prefix = topo?.prefix
    await topo?.destroy()
    topo = undefined
    if (prefix != null) assert.deepEqual(NetnsTopology.leftovers(prefix), [], 'namespaces left behind')
  })

  it("a LAN of three machines: the README's commands (join with only --bootstrap and --model) generate the model's tokens", async () => {
    topo = new NetnsTopology('pl')
    topo.addSwitch('lan')
    topo.addHost('a', 'lan', '10.77.0.1/24')
    topo.addHost('b', 'lan', '10.77.0.2/24')
    topo.addHost('c', 'lan', '10.77.0.3/24')
    const model = fixtureDir('tiny-llama')
    const g = golden('tiny-llama')

    // 1. the bootstrap peer, as the README runs it
    const keyFile = `/tmp/${topo.prefix}-bootstrap.key`
    const boot = await startIn(topo, 'a', ['bootstrap', '--listen', '/ip4/0.0.0.0/tcp/31337', '--key', keyFile])
    assert.deepEqual(boot.ready.addrs, [`/ip4/10.77.0.1/tcp/31337/p2p/${boot.ready.peerId}`], 'announces its LAN address only (no loopback, no link-local)')
    const bootstrap = boot.ready.addrs[0]

    // 2. two machines serve the model, given nothing but --bootstrap and --model
    const [b, c] = await Promise.all([
      startIn(topo, 'b', ['join', '--bootstrap', bootstrap, '--model', model]),
      startIn(topo, 'c', ['join', '--bootstrap', bootstrap, '--model', model])
    ])
    for (const [n, ip] of [[b, '10.77.0.2'], [c, '10.77.0.3']] as const) {
      // its own addresses (relayed ones through the bootstrap peer may follow: it cannot tell a LAN from a NAT)
      assert.deepEqual(ownAddrs(n.ready.addrs), [`/ip4/${ip}/tcp/31337/p2p/${n.ready.peerId}`, `/ip4/${ip}/udp/31337/quic-v1/p2p/${n.ready.peerId}`], 'listens on every interface on the default port, TCP and QUIC; announces the LAN address')
    }

    // 3. the client on the bootstrap machine: every hop crosses the LAN
    const r = await runIn(topo, 'a', [CLIENT_BIN, 'generate', '--bootstrap', bootstrap, '--model', model, '--token-ids', g.prompt_ids.join(','),
      '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout).token_ids, g.greedy_new_ids)
  })

  it('two homes behind NATs (endpoint-independent and symmetric) and a public bootstrap relay: a client in a third home generates the model\'s tokens', async () => {
    topo = new NetnsTopology('pn')
    topo.addSwitch('net')
    topo.addHost('pub', 'net', '7.7.7.1/24')
    const homes = [['h1', '7.7.7.11', '192.168.1', 'cone'], ['h2', '7.7.7.12', '192.168.2', 'symmetric'], ['h3', '7.7.7.13', '192.168.3', 'cone']] as const
    let delayed = true
    for (const [h, wan, lan, nat] of homes) {
      topo.addSwitch(h)
      topo.addRouter(`${h}r`, { switch: 'net', cidr: `${wan}/24` }, { switch: h, cidr: `${lan}.1/24` }, nat)
      topo.addHost(`${h}m`, h, `${lan}.2/24`, `${lan}.1`)
      delayed = topo.delay(`${h}r`, 'wan', 20) && delayed // 20 ms on every home's uplink
    }
    if (!delayed) console.log('      (this kernel has no netem: the homes\' uplinks run without the added 20 ms)')
    const model = fixtureDir('tiny-llama')
    const g = golden('tiny-llama')
    const stun = 'stun:7.7.7.1:3478'
    topo.spawn('pub', process.execPath, [new URL('./support/stun-server.ts', import.meta.url).pathname, '7.7.7.1', '3478'])

    const boot = await startIn(topo, 'pub', ['bootstrap', '--key', `/tmp/${topo.prefix}-bootstrap.key`])
    assert.deepEqual(boot.ready.addrs, [`/ip4/7.7.7.1/tcp/31337/p2p/${boot.ready.peerId}`, `/ip4/7.7.7.1/udp/31337/quic-v1/p2p/${boot.ready.peerId}`], 'a bootstrap peer announces its public address at once, TCP and QUIC')
    assert.equal(boot.ready.reachable, 'yes')
    const bootstrap = boot.ready.addrs[0]
    const s1 = await startIn(topo, 'h1m', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '0:2', '--stun', stun])
    const s2 = await startIn(topo, 'h2m', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '2:3', '--stun', stun])
    console.log(`      ready: home 1 ${JSON.stringify(s1.ready.addrs)} reachable ${s1.ready.reachable}; home 2 ${JSON.stringify(s2.ready.addrs)} reachable ${s2.ready.reachable}`)
    for (const s of [s1, s2]) {
      assert.ok(['relayed', 'lan'].includes(s.ready.reachable), `reachable: ${s.ready.reachable}`)
      // the ready line waited for the reservation: it lists the relayed addresses peers dial
      assert.ok(s.ready.addrs.some((a: string) => a.startsWith(`${bootstrap}/p2p-circuit/`)), `relayed address in the ready line: ${s.ready.addrs.join(' ')}`)
    }

    // how a client in home 3 reaches each server: direct, hole-punched (WebRTC through both NATs) or relayed
    const probe = await runIn(topo, 'h3m', [new URL('./support/hop-probe.ts', import.meta.url).pathname, bootstrap, stun, [s1.ready.peerId, s2.ready.peerId].join(',')], 120_000)
    assert.equal(probe.code, 0, probe.stderr)
    const hops = JSON.parse(probe.stdout.trim().split('\n').at(-1) ?? '{}')
    for (const [name, s] of [['home 1 (endpoint-independent NAT)', s1], ['home 2 (symmetric NAT)', s2]] as const) {
      const hop = hops[s.ready.peerId]
      console.log(`      hop to ${name}: ${hop?.via ?? 'failed'}${hop?.ms != null ? ` in ${hop.ms} ms, ping ${hop.pingMs} ms (median of 20)` : ''} (${hop?.addr ?? hop?.error})`)
    }
    assert.equal(hops[s2.ready.peerId]?.via, 'relayed', probe.stderr)
    // the hole punch: WebRTC (ICE, STUN) set up through the relay, then direct through both NATs
    assert.equal(hops[s1.ready.peerId]?.via, 'hole-punched', probe.stderr)

    const r = await runIn(topo, 'h3m', [CLIENT_BIN, 'generate', '--bootstrap', bootstrap, '--model', model, '--stun', stun, '--token-ids', g.prompt_ids.join(','),
      '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'], 150_000, { DEBUG: ['libp2p:connection-manager:dial-queue', 'libp2p:*:circuit-relay:connection:*', process.env.REACH_DEBUG].filter(d => d != null && d !== '').join(',') })
    assert.equal(r.code, 0, `${r.stderr}\n--- home 1:\n${s1.stderr().slice(-3000)}\n--- home 2:\n${s2.stderr().slice(-3000)}`)
    const out = JSON.parse(r.stdout)
    assert.deepEqual(out.token_ids, g.greedy_new_ids)
    assert.deepEqual(out.route.map((h: { peer: string }) => h.peer), [s1.ready.peerId, s2.ready.peerId])
    // the client's own connections, per hop, from libp2p's logs: the dials that succeeded, and the
    // relayed connections (also those WebRTC opens for its signalling and keeps when ICE fails)
    const made = [...r.stderr.matchAll(/dial to (\S+) succeeded|outbound relayed connection established to (\S+)/g)]
      .map(m => m[1] ?? `/p2p-circuit/p2p/${m[2]}`)
    const kinds = (peer: string): string[] => [...new Set(made.filter(a => a.endsWith(`/p2p/${peer}`)).map(hopKind))]
    console.log(`      generate: connections to home 1: ${kinds(s1.ready.peerId).join(', ')}; to home 2: ${kinds(s2.ready.peerId).join(', ')}`)
    // libp2p runs streams on a direct connection when it has one besides a relayed one
    assert.ok(kinds(s1.ready.peerId).includes('hole-punched'), `client to home 1: ${kinds(s1.ready.peerId).join(', ')}`)
    assert.deepEqual(kinds(s2.ready.peerId), ['relayed'])
  })

  it('AutoNAT v2: a node on the public network is confirmed reachable, one behind NAT is not (the ready line says which)', async () => {
    topo = new NetnsTopology('pa')
    topo.addSwitch('net')
    topo.addHost('pub', 'net', '7.7.7.1/24')
    topo.addHost('open', 'net', '7.7.7.2/24')
    topo.addSwitch('h1')
    topo.addRouter('h1r', { switch: 'net', cidr: '7.7.7.11/24' }, { switch: 'h1', cidr: '192.168.1.1/24' }, 'cone')
    topo.addHost('h1m', 'h1', '192.168.1.2/24', '192.168.1.1')
    const model = fixtureDir('tiny-llama')
    const boot = await startIn(topo, 'pub', ['bootstrap', '--key', `/tmp/${topo.prefix}-bootstrap.key`])
    const bootstrap = boot.ready.addrs[0]
    const [open, home] = await Promise.all([
      startIn(topo, 'open', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '0:1']),
      startIn(topo, 'h1m', ['join', '--bootstrap', bootstrap, '--model', model, '--blocks', '1:2'])
    ])
    console.log(`      public node: reachable ${open.ready.reachable} ${JSON.stringify(open.ready.addrs)}\n      home node: reachable ${home.ready.reachable}`)
    // the public address is announced only once the bootstrap peer dialled it back
    assert.equal(open.ready.reachable, 'yes', open.stderr())
    assert.ok(open.ready.addrs.includes(`/ip4/7.7.7.2/tcp/31337/p2p/${open.ready.peerId}`), open.ready.addrs.join(' '))
    // behind NAT: no dial-back succeeds, so no public address of its own; peers reach it through the relay
    assert.equal(home.ready.reachable, 'relayed', home.stderr())
    assert.ok(!home.ready.addrs.some((a: string) => a.startsWith('/ip4/7.7.7.11/')), home.ready.addrs.join(' '))
  })
})
