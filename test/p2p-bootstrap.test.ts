// Bootstrap dialing: every way it goes wrong gives one clear line, in bounded time.
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { createPlexusNode, dialBootstrap, keepBootstrapped, dhtPeerCount, parseBootstrapAddr, describeDialError } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import type { AddressInfo, Server, Socket } from 'node:net'

async function freePort (): Promise<number> {
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address() as AddressInfo
  await new Promise(resolve => s.close(resolve))
  return port
}

async function timed<T> (p: Promise<T>): Promise<{ ms: number, value?: T, error?: Error }> {
  const t0 = Date.now()
  try {
    return { ms: Date.now() - t0, value: await p }
  } catch (err) {
    return { ms: Date.now() - t0, error: err as Error }
  }
}

describe('p2p: bootstrap', function () {
  this.timeout(20_000)
  let boot: PlexusNode
  let node: PlexusNode
  let bootAddr: string
  let silent: Server
  const sockets: Socket[] = []
  let silentPort: number
  // failure cases name a peer we are not connected to: a dial of a connected peer reuses the connection
  let ghost: string

  before(async () => {
    boot = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server' })
    node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
    bootAddr = boot.getMultiaddrs()[0].toString()
    ghost = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    // accepts TCP connections and never says a word: a blackholed peer
    silent = createServer(s => { sockets.push(s) })
    await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
    silentPort = (silent.address() as AddressInfo).port
  })

  after(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => silent.close(resolve))
    await Promise.all([boot.stop(), node.stop()])
  })

  it('rejects malformed addresses before dialing anything', async () => {
    assert.throws(() => parseBootstrapAddr('garbage'), /^Error: bad bootstrap address "garbage": String multiaddr must start with "\/"/)
    assert.throws(() => parseBootstrapAddr('/ip4/999.1.1.1/tcp/1/p2p/x'), /bad bootstrap address "\/ip4\/999\.1\.1\.1\/tcp\/1\/p2p\/x": Invalid IPv4 address/)
    assert.throws(() => parseBootstrapAddr('/ip4/127.0.0.1/tcp/4001'), /bad bootstrap address "\/ip4\/127\.0\.0\.1\/tcp\/4001": must end in \/p2p\/<peer id>/)
    assert.throws(() => parseBootstrapAddr(`/p2p/${ghost}`), /has no transport address/)
    await assert.rejects(dialBootstrap(node, [bootAddr, 'garbage']), /bad bootstrap address "garbage"/)
    const ok = parseBootstrapAddr(bootAddr)
    assert.ok(ok.peerId?.equals(boot.peerId) === true)
  })

  it('connects, and reports the failed ones beside the good one', async () => {
    const refused = `/ip4/127.0.0.1/tcp/${await freePort()}/p2p/${ghost}`
    const r = await dialBootstrap(node, [bootAddr, refused], { timeoutMs: 3000 })
    assert.deepEqual(r.connected, [bootAddr])
    assert.equal(r.failed.length, 1)
    assert.equal(r.failed[0].error, `cannot reach bootstrap peer ${refused}: connection refused`)
    // listing ourselves is skipped, not an error
    const self = await dialBootstrap(boot, [bootAddr])
    assert.deepEqual(self, { connected: [], failed: [] })
  })

  it('nothing listening: connection refused, at once', async () => {
    const addr = `/ip4/127.0.0.1/tcp/${await freePort()}/p2p/${ghost}`
    const { ms, error } = await timed(dialBootstrap(node, [addr], { timeoutMs: 3000 }))
    assert.ok(error != null)
    assert.equal(error.message, `could not connect to any bootstrap peer:\n  cannot reach bootstrap peer ${addr}: connection refused`)
    assert.ok(ms < 1000, `took ${ms} ms`)
  })

  it('wrong peer id: says which peer is really there', async () => {
    const impostor = await generateKeyPair('Ed25519')
    const wrong = peerIdFromPrivateKey(impostor).toString()
    const addr = bootAddr.replace(boot.peerId.toString(), wrong)
    const { ms, error } = await timed(dialBootstrap(node, [addr], { timeoutMs: 3000 }))
    assert.match(error?.message ?? '', new RegExp(`cannot reach bootstrap peer ${addr}: peer id mismatch: the peer there is ${boot.peerId.toString()}, not ${wrong}`))
    assert.ok(ms < 1000, `took ${ms} ms`)
  })

  it('a peer that never answers: timed out, at the deadline', async () => {
    const addr = `/ip4/127.0.0.1/tcp/${silentPort}/p2p/${ghost}`
    const { ms, error } = await timed(dialBootstrap(node, [addr], { timeoutMs: 1000 }))
    assert.match(error?.message ?? '', new RegExp(`cannot reach bootstrap peer ${addr}: timed out after 1 s$`))
    assert.ok(ms >= 900 && ms < 2500, `took ${ms} ms`)
  })

  it('all failures listed together, still within one deadline', async () => {
    // two different peers: libp2p merges concurrent dials of one peer into one dial
    const ghost2 = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const addrs = [
      `/ip4/127.0.0.1/tcp/${await freePort()}/p2p/${ghost}`,
      `/ip4/127.0.0.1/tcp/${silentPort}/p2p/${ghost2}`
    ]
    const { ms, error } = await timed(dialBootstrap(node, addrs, { timeoutMs: 1000 }))
    const lines = error?.message.split('\n') ?? []
    assert.equal(lines.length, 3)
    assert.ok(lines.some(l => l.endsWith('connection refused')) && lines.some(l => l.endsWith('timed out after 1 s')), error?.message)
    assert.ok(ms < 2500, `took ${ms} ms`)
  })

  it('a caller abort stops the dials at once', async () => {
    const addr = `/ip4/127.0.0.1/tcp/${silentPort}/p2p/${ghost}`
    const { ms, error } = await timed(dialBootstrap(node, [addr], { timeoutMs: 10_000, signal: AbortSignal.timeout(300) }))
    assert.equal(error?.name, 'TimeoutError')
    assert.ok(ms < 1500, `took ${ms} ms`)
  })

  it('names DNS failures', () => {
    const ma = multiaddr('/dns4/nonexistent.invalid/tcp/4001/p2p/12D3KooWJo8CLgV7JfMoVQ1ZuG5n7AwfEtn2zGLD4qrsPPcQ4WEo')
    const enotfound = Object.assign(new Error('connection error nonexistent.invalid:4001: getaddrinfo ENOTFOUND nonexistent.invalid'), { code: 'ENOTFOUND' })
    assert.equal(describeDialError(enotfound, ma), 'DNS lookup of nonexistent.invalid failed (ENOTFOUND)')
    const dnsaddr = Object.assign(new Error('DNS lookup of _dnsaddr.x failed'), { name: 'DNSQueryFailedError' })
    assert.equal(describeDialError(new AggregateError([dnsaddr]), ma), 'DNS lookup of nonexistent.invalid failed')
  })
})

describe('p2p: staying bootstrapped', function () {
  this.timeout(20_000)
  it('a node whose connections all dropped dials the bootstrap peer again and is back in the DHT', async () => {
    const boot = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server' })
    const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server' })
    try {
      const addr = boot.getMultiaddrs()[0].toString()
      await dialBootstrap(node, [addr])
      const stop = keepBootstrapped(node, [addr], { checkIntervalMs: 200 })
      await waitFor(() => dhtPeerCount(node) >= 1, 5000, 'the DHT never added the bootstrap peer')
      // the bootstrap side drops us and forgets us: nothing but the keeper brings us back
      await boot.hangUp(node.peerId)
      await waitFor(() => node.getConnections().length === 0, 5000, 'still connected after hang-up')
      await waitFor(() => node.getConnections(boot.peerId).length > 0 && dhtPeerCount(node) >= 1, 8000, 'not reconnected to the bootstrap peer')
      stop()
      // once stopped, it stays down
      await boot.hangUp(node.peerId)
      await new Promise(resolve => setTimeout(resolve, 1000))
      assert.equal(node.getConnections(boot.peerId).length, 0)
    } finally {
      await Promise.all([boot.stop(), node.stop()])
    }
  })
})

describe('client: a swarm it cannot reach', function () {
  this.timeout(20_000)
  it('says it is not connected, instead of "no peer serves" the blocks', async () => {
    const { SwarmDiscovery } = await import('@plexus/client')
    const alone = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: [] })
    try {
      const d = new SwarmDiscovery({ node: alone }, { modelId: 'a'.repeat(64), numBlocks: 4 })
      const t0 = Date.now()
      await assert.rejects(d.candidates(), { name: 'SwarmUnreachableError', message: /not connected to the swarm: no DHT peer reachable for 5 s/ })
      assert.ok(Date.now() - t0 < 8000, `took ${Date.now() - t0} ms`)
    } finally { await alone.stop() }
  })
})

async function waitFor (cond: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms
  while (!cond()) {
    if (Date.now() > until) throw new Error(`${what} (after ${ms} ms)`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
