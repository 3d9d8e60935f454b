// libp2p's per-IP inbound connection rate limit is on (INBOUND_CONNECTIONS_PER_HOST a second): a
// burst of TCP connections from one address beyond it is closed on accept. A node listening on
// loopback alone (a local swarm, the tests) exempts loopback, where every peer shares one address.
import assert from 'node:assert/strict'
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { networkInterfaces } from 'node:os'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createPlexusNode, INBOUND_CONNECTIONS_PER_HOST } from '@plexus/p2p'

const BURST = 48

/** Opens `n` TCP connections at once; how many the other side closed within `ms`. */
async function burst (host: string, port: number, n: number, ms = 1500): Promise<number> {
  const sockets: Socket[] = []
  let closed = 0
  await Promise.all(Array.from({ length: n }, async () => {
    await new Promise<void>((resolve) => {
      const s = connect({ host, port }, () => { resolve() })
      s.on('error', () => { resolve() })
      s.on('close', () => { closed++ })
      sockets.push(s)
    })
  }))
  await new Promise(resolve => setTimeout(resolve, ms))
  const n2 = closed
  for (const s of sockets) s.destroy()
  return n2
}

function tcpPort (addrs: Array<{ toString: () => string }>): number {
  const m = /\/tcp\/(\d+)/.exec(addrs[0].toString())
  assert.ok(m != null)
  return Number(m[1])
}

describe('hardening: per-IP inbound connection rate limit', function () {
  this.timeout(60_000)

  it(`a burst of ${BURST} connections from one non-loopback address: all beyond ${INBOUND_CONNECTIONS_PER_HOST} a second closed on accept`, async function () {
    const ip = Object.values(networkInterfaces()).flat().find(a => a != null && a.family === 'IPv4' && !a.internal)?.address
    // loopback is exempt from the limit on a loopback-only node, so the burst needs another address
    assert.ok(ip != null, 'this test needs a non-loopback IPv4 address on this machine (none found)')
    const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: [`/ip4/${ip}/tcp/0`] })
    try {
      const closed = await burst(ip!, tcpPort(node.getMultiaddrs()), BURST)
      console.log(`      ${closed} of ${BURST} closed on accept`)
      // a refill of the rate limiter during the burst may admit one or two more
      assert.ok(closed >= BURST - INBOUND_CONNECTIONS_PER_HOST - 4, `only ${closed} of ${BURST} refused`)
      assert.ok(closed <= BURST - INBOUND_CONNECTIONS_PER_HOST, `${closed} of ${BURST} refused: the limit admitted fewer than ${INBOUND_CONNECTIONS_PER_HOST}`)
    } finally { await node.stop() }
  })

  it(`a node listening on loopback alone admits the same burst from loopback`, async () => {
    const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      const closed = await burst('127.0.0.1', tcpPort(node.getMultiaddrs()), BURST)
      assert.equal(closed, 0, `${closed} of ${BURST} loopback connections closed`)
    } finally { await node.stop() }
  })
})
