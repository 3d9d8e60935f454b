// PLEXUS_LINK_DELAY_MS (the benchmarks' stand-in for tc netem): two real nodes on loopback, one
// process. Each side delays what it sends, so a round trip grows by twice the delay; bytes still
// arrive whole and in order under backpressure, and the delay composes with a swarm key.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { pEvent } from 'p-event'
import { createPlexusNode, parseSwarmKey, newSwarmKey } from '@plexus/p2p'
import type { PlexusNode, PlexusNodeInit } from '@plexus/p2p'

const ENV = 'PLEXUS_LINK_DELAY_MS'
const DELAY = 20
const SINK = '/plexus/test/link-delay-sink/1.0.0'
const BULK = 4 << 20

let nodes: PlexusNode[] = []
/** A node created with PLEXUS_LINK_DELAY_MS = `delay` (read once, when the node is made). */
async function node (delay: number, init: Partial<PlexusNodeInit> = {}): Promise<PlexusNode> {
  const before = process.env[ENV]
  if (delay > 0) process.env[ENV] = String(delay)
  else delete process.env[ENV]
  try {
    // no liveness pings: they would race the test's own (one ping stream at a time)
    const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', connectionMonitor: { enabled: false }, ...init })
    nodes.push(n)
    return n
  } finally {
    if (before == null) delete process.env[ENV]
    else process.env[ENV] = before
  }
}

const ECHO = '/plexus/test/link-delay-echo/1.0.0'
const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]

/** Median round trip of a small message on an open stream from `a` to `b` (an echo), and of a libp2p ping, ms. */
async function roundTrips (a: PlexusNode, b: PlexusNode, n = 15): Promise<{ echo: number, ping: number }> {
  await b.handle(ECHO, async (stream) => { for await (const chunk of stream) stream.send(chunk) })
  const stream = await a.dialProtocol(b.getMultiaddrs()[0], ECHO)
  const echo: number[] = []
  for (let i = 0; i <= n; i++) {
    const reply = pEvent(stream, 'message')
    const t0 = performance.now()
    stream.send(new Uint8Array(32))
    await reply
    if (i > 0) echo.push(performance.now() - t0)
  }
  await stream.close()
  const ping: number[] = []
  for (let i = 0; i < n; i++) {
    // timed here: ping() answers in whole milliseconds
    const t0 = performance.now()
    await a.services.ping.ping(b.peerId)
    ping.push(performance.now() - t0)
  }
  return { echo: median(echo), ping: median(ping) }
}

describe('link delay (PLEXUS_LINK_DELAY_MS)', function () {
  afterEach(async () => {
    await Promise.all(nodes.map(async n => await n.stop()))
    nodes = []
  })

  it('adds twice the one-way delay to a round trip', async () => {
    const plain = await roundTrips(await node(0), await node(0))
    const delayed = await roundTrips(await node(DELAY), await node(DELAY))
    const added = delayed.echo - plain.echo
    const what = `echo ${plain.echo.toFixed(1)} → ${delayed.echo.toFixed(1)} ms, ping ${plain.ping.toFixed(1)} → ${delayed.ping.toFixed(1)} ms`
    // loose bounds: a timer fires late, never early, on a loaded machine
    assert.ok(added >= 2 * DELAY - 3 && added <= 2 * DELAY + 40, `round trip grew by ${added.toFixed(1)} ms, expected ≈ ${2 * DELAY} (${what})`)
    // a libp2p ping opens a stream first: two round trips
    assert.ok(delayed.ping - plain.ping >= 4 * DELAY - 6, `ping grew by ${(delayed.ping - plain.ping).toFixed(1)} ms, expected ≈ ${4 * DELAY} (${what})`)
    console.log(`      ${what}`)
  })

  it('delivers a bulk transfer whole and in order', async () => {
    const a = await node(DELAY)
    const b = await node(DELAY, { listen: ['/ip4/127.0.0.1/tcp/0'] })
    await b.handle(SINK, async (stream) => {
      const hash = createHash('sha256')
      let got = 0
      for await (const chunk of stream) {
        hash.update(chunk.subarray())
        got += chunk.byteLength
        if (got >= BULK) break
      }
      stream.send(hash.digest())
      await stream.close()
    })
    const data = new Uint8Array(BULK)
    for (let i = 0; i < BULK; i++) data[i] = (i * 2654435761) >>> 24
    const stream = await a.dialProtocol(b.getMultiaddrs()[0], SINK)
    const reply = (async () => {
      for await (const chunk of stream) return chunk.subarray()
    })()
    for (let off = 0; off < BULK; off += 64 << 10) {
      if (!stream.send(data.subarray(off, off + (64 << 10)))) await pEvent(stream, 'drain', { rejectionEvents: ['close'] })
    }
    assert.equal(Buffer.from((await reply)!).toString('hex'), createHash('sha256').update(data).digest('hex'))
    await stream.close()
  })

  it('composes with a swarm key', async () => {
    const swarmKey = parseSwarmKey(newSwarmKey())
    const init = { swarmKey, quic: false }
    const plain = await roundTrips(await node(0, init), await node(0, init), 5)
    const delayed = await roundTrips(await node(DELAY, init), await node(DELAY, init), 5)
    assert.ok(delayed.echo - plain.echo >= 2 * DELAY - 3, `round trip grew by ${(delayed.echo - plain.echo).toFixed(1)} ms, expected ≈ ${2 * DELAY}`)
  })

  it('refuses a value that is not a number of milliseconds', async () => {
    process.env[ENV] = 'abc'
    try {
      await assert.rejects(createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' }), /PLEXUS_LINK_DELAY_MS must be/)
    } finally {
      delete process.env[ENV]
    }
  })
})
