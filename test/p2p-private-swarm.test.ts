// Reachability on loopback: which addresses a node announces, the default listen port, swarm keys
// (private swarms), /dnsaddr bootstrap names against a DNS server this test runs, and the shipped
// bootstrap list. Real nodes and real plexus-node / plexus-client processes.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import {
  createPlexusNode, dialBootstrap, defaultListen, parseSwarmKey, newSwarmKey, dhtProtocol, defaultBootstrapPeers, bootstrapOrDefault,
  DHT_PROTOCOL
} from '@plexus/p2p'
import type { PlexusNode, PlexusNodeInit, SwarmKeyMismatch } from '@plexus/p2p'
import type { AddressInfo } from 'node:net'
import { startDnsServer } from './support/dns-server.ts'
import type { TestDnsServer } from './support/dns-server.ts'
import { startNode, CLIENT_BIN, NODE_BIN } from '../scripts/lib/local-swarm.ts'
import type { NodeProcess } from '../scripts/lib/local-swarm.ts'

const nodes: PlexusNode[] = []
async function node (init: Partial<PlexusNodeInit> = {}): Promise<PlexusNode> {
  const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server', ...init })
  nodes.push(n)
  return n
}

/** Runs a CLI to its end; its exit code and output. */
async function run (bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null, stdout: string, stderr: string, ms: number }> {
  const t0 = Date.now()
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PLEXUS_BOOTSTRAP: '', ...env } })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  return { code, stdout, stderr, ms: Date.now() - t0 }
}

describe('p2p: reachability on loopback', function () {
  this.timeout(120_000)
  const dir = mkdtempSync(join(tmpdir(), 'plexus-reach-'))
  after(async () => {
    await Promise.all(nodes.map(async n => { await n.stop() }))
    rmSync(dir, { recursive: true, force: true })
  })

  describe('addresses', () => {
    it('a node on every interface announces neither loopback nor link-local addresses; a loopback-only one announces loopback', async () => {
      const wide = await node({ listen: ['/ip4/0.0.0.0/tcp/0', '/ip6/::/tcp/0'] })
      const announced = wide.getMultiaddrs().map(String)
      assert.ok(announced.every(a => !/^\/ip4\/127\.|^\/ip6\/::1\/|^\/ip4\/169\.254\.|^\/ip6\/fe80/i.test(a)), announced.join(' '))
      const local = await node({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      assert.match(local.getMultiaddrs()[0].toString(), /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
    })

    it('listens on the default port, or on another when that one is taken', async () => {
      const blocker = createServer()
      await new Promise<void>(resolve => blocker.listen(0, '0.0.0.0', resolve))
      const taken = (blocker.address() as AddressInfo).port
      try {
        const fallback = await defaultListen(taken)
        assert.ok(fallback.port > 0 && fallback.port !== taken, `fell back to ${fallback.port}`)
        assert.deepEqual(fallback.listen, [`/ip4/0.0.0.0/tcp/${fallback.port}`, `/ip6/::/tcp/${fallback.port}`])
      } finally {
        await new Promise(resolve => blocker.close(resolve))
      }
      const free = await defaultListen(taken)
      assert.equal(free.port, taken)
    })
  })

  describe('swarm keys', () => {
    const key = parseSwarmKey(newSwarmKey())
    const other = parseSwarmKey(newSwarmKey())
    let member: PlexusNode
    const refused: SwarmKeyMismatch[] = []

    before(async () => {
      member = await node({ listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: key, onSwarmKeyMismatch: m => refused.push(m) })
    })

    it('peers holding the key connect, and their DHT is the swarm\'s own', async () => {
      const peer = await node({ listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: key })
      await dialBootstrap(peer, [member.getMultiaddrs()[0].toString()], { timeoutMs: 5000 })
      assert.notEqual(dhtProtocol(key), DHT_PROTOCOL)
      assert.notEqual(dhtProtocol(key), dhtProtocol(other))
      assert.ok(member.getProtocols().includes(dhtProtocol(key)))
      assert.ok(!member.getProtocols().includes(DHT_PROTOCOL))
    })

    it('another key is refused at once, with one line on each side', async () => {
      const stranger = await node({ listen: ['/ip4/127.0.0.1/tcp/0'], swarmKey: other })
      const t0 = Date.now()
      await assert.rejects(dialBootstrap(stranger, [member.getMultiaddrs()[0].toString()], { timeoutMs: 5000 }), /swarm key mismatch/)
      assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`)
      assert.equal(refused.at(-1)?.direction, 'inbound')
    })

    it('a peer without a key cannot connect to a private swarm, nor a member to it', async () => {
      const outsider = await node({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      await assert.rejects(dialBootstrap(outsider, [member.getMultiaddrs()[0].toString()], { timeoutMs: 3000 }), /private swarm/)
      await assert.rejects(dialBootstrap(member, [outsider.getMultiaddrs()[0].toString()], { timeoutMs: 2000 }), /cannot reach bootstrap peer/)
      assert.equal(member.getConnections(outsider.peerId).length, 0)
    })

    it('plexus-node and plexus-client: with the key the client joins; with another, both print one line', async () => {
      const keyFile = join(dir, 'swarm.key')
      const wrongFile = join(dir, 'wrong.key')
      assert.equal((await run(NODE_BIN, ['swarm-key', '--out', keyFile])).code, 0)
      assert.equal((await run(NODE_BIN, ['swarm-key', '--out', wrongFile])).code, 0)
      const again = await run(NODE_BIN, ['swarm-key', '--out', keyFile])
      assert.equal(again.code, 2)
      assert.match(again.stderr, /file exists/)
      let boot: NodeProcess | undefined
      try {
        boot = await startNode({ name: 'bootstrap', args: ['bootstrap', '--swarm-key', keyFile] })
        const ok = await run(CLIENT_BIN, ['models', '--bootstrap', boot.addrs[0], '--swarm-key', keyFile])
        assert.equal(ok.code, 0, ok.stderr)
        const bad = await run(CLIENT_BIN, ['models', '--bootstrap', boot.addrs[0], '--swarm-key', wrongFile])
        assert.equal(bad.code, 2)
        assert.match(bad.stderr, /swarm key mismatch/)
        assert.equal(bad.stderr.trim().split('\n').length, 2, bad.stderr) // "could not connect…" + the reason
        const until = Date.now() + 3000
        while (!/refused a connection from .*swarm key mismatch/.test(boot.stderr()) && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 50))
        assert.match(boot.stderr(), /refused a connection from \/ip4\/127\.0\.0\.1\/tcp\/\d+: swarm key mismatch/)
        const malformed = join(dir, 'bad.key')
        writeFileSync(malformed, 'not a key')
        const unreadable = await run(CLIENT_BIN, ['models', '--bootstrap', boot.addrs[0], '--swarm-key', malformed])
        assert.equal(unreadable.code, 2)
        assert.match(unreadable.stderr, /is not a swarm key/)
      } finally {
        await boot?.stop()
      }
    })
  })

  describe('bootstrap names and lists', () => {
    let dns: TestDnsServer
    let boot: PlexusNode
    let bootAddr: string
    before(async () => {
      boot = await node({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      bootAddr = boot.getMultiaddrs()[0].toString()
      const port = bootAddr.split('/')[4]
      dns = await startDnsServer({
        txt: { '_dnsaddr.boot.plexus.test': [`dnsaddr=${bootAddr}`, 'unrelated=record'] },
        a: { 'host.plexus.test': ['127.0.0.1'] }
      })
      assert.ok(port != null)
    })
    after(async () => { await dns.close() })

    it('/dnsaddr/NAME (no peer id) and /dns4 resolve through the given resolver and connect', async () => {
      const viaTxt = await node({ listen: [], dhtMode: 'client', dnsResolver: dns.address })
      const r = await dialBootstrap(viaTxt, ['/dnsaddr/boot.plexus.test'], { timeoutMs: 5000 })
      assert.deepEqual(r.connected, ['/dnsaddr/boot.plexus.test'])
      assert.equal(viaTxt.getConnections(boot.peerId).length > 0, true)
      const viaA = await node({ listen: [], dhtMode: 'client', dnsResolver: dns.address })
      const port = bootAddr.split('/')[4]
      await dialBootstrap(viaA, [`/dns4/host.plexus.test/tcp/${port}/p2p/${boot.peerId}`], { timeoutMs: 5000 })
      assert.ok(dns.asked.includes('TXT _dnsaddr.boot.plexus.test') && dns.asked.includes('A host.plexus.test'), dns.asked.join(', '))
    })

    it('a name that does not resolve is one line naming it, quickly', async () => {
      const n = await node({ listen: [], dhtMode: 'client', dnsResolver: dns.address })
      const t0 = Date.now()
      await assert.rejects(dialBootstrap(n, ['/dnsaddr/missing.plexus.test'], { timeoutMs: 5000 }), /DNS lookup of _dnsaddr\.missing\.plexus\.test failed \(ENOTFOUND\)/)
      assert.ok(Date.now() - t0 < 2000)
    })

    it('plexus-client finds a swarm by /dnsaddr name with --dns-resolver', async () => {
      const r = await run(CLIENT_BIN, ['models', '--bootstrap', '/dnsaddr/boot.plexus.test', '--dns-resolver', dns.address])
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /no models are served/)
    })

    it('without --bootstrap: the shipped list, else a clear error; PLEXUS_BOOTSTRAP overrides', async () => {
      const file = join(dir, 'peers.txt')
      writeFileSync(file, `# comment\n\n${bootAddr}  # the local one\n/dnsaddr/boot.plexus.test\n`)
      assert.deepEqual(defaultBootstrapPeers(file), [bootAddr, '/dnsaddr/boot.plexus.test'])
      writeFileSync(file, '# none yet\n')
      assert.throws(() => bootstrapOrDefault(undefined, file), /no bootstrap peers: pass --bootstrap/)
      writeFileSync(file, '/ip4/127.0.0.1/tcp/1\n')
      assert.throws(() => defaultBootstrapPeers(file), /must end in \/p2p/)
      // the shipped bootstrap/peers.txt lists no public swarm yet
      const none = await run(CLIENT_BIN, ['models'])
      assert.equal(none.code, 2)
      assert.match(none.stderr, /no bootstrap peers: pass --bootstrap MULTIADDR \(or set PLEXUS_BOOTSTRAP\), or list them in .*bootstrap\/peers\.txt/)
      const fromEnv = await run(CLIENT_BIN, ['models'], { PLEXUS_BOOTSTRAP: bootAddr })
      assert.equal(fromEnv.code, 0, fromEnv.stderr)
    })
  })
})
