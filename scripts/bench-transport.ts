// `node scripts/bench-transport.ts [--iterations 1000] [--dials 30] [--bytes 3200] [--order tcp,quic]`: TCP (noise,
// yamux) against QUIC (TLS 1.3 and streams of its own) on loopback, two nodes in one process:
// connection setup (dial to a usable connection, a fresh one each time) and the round trip of a
// step-sized frame (3.2 KB: a 768-wide f32 activation and its header) on one open stream.
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { createPlexusNode } from '@plexus/p2p'
import { median } from './lib/bench-common.ts'

const { values: a } = parseArgs({ options: { iterations: { type: 'string', default: '1000' }, dials: { type: 'string', default: '30' }, bytes: { type: 'string', default: '3200' }, order: { type: 'string', default: 'tcp,quic' } } })
const N = Number(a.iterations)
const DIALS = Number(a.dials)
const payload = new Uint8Array(Number(a.bytes)).map((_, i) => i)
const PROTO = '/plexus/bench-echo/1.0.0'

function pct (xs: number[], p: number): number { return [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(xs.length * p))] }

const server = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/udp/0/quic-v1'], dhtMode: 'client' })
await server.handle(PROTO, async (stream) => {
  const io = lpStream(stream, { maxDataLength: 1 << 20 })
  try { for (;;) await io.write(await io.read()) } catch { stream.abort(new Error('done')) }
})
const client = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client' })
const out: Record<string, Record<string, number>> = {}
for (const kind of (a.order ?? 'tcp,quic').split(',') as Array<'tcp' | 'quic'>) {
  const addr = server.getMultiaddrs().find(m => kind === 'quic' ? m.toString().includes('/quic-v1') : m.toString().includes('/tcp/'))
  if (addr == null) throw new Error(`the server has no ${kind} address`)
  const setup: number[] = []
  for (let i = 0; i < DIALS + 3; i++) {
    await client.hangUp(server.peerId)
    const t0 = performance.now()
    const conn = await client.dial(multiaddr(addr.toString()), { signal: AbortSignal.timeout(10_000) })
    const s = await conn.newStream(PROTO)
    const io = lpStream(s)
    await io.write(payload)
    await io.read()
    if (i >= 3) setup.push(performance.now() - t0)
    s.abort(new Error('next'))
  }
  const stream = await client.dialProtocol(multiaddr(addr.toString()), PROTO)
  const io = lpStream(stream, { maxDataLength: 1 << 20 })
  const rtt: number[] = []
  for (let i = 0; i < N + 100; i++) {
    const t0 = performance.now()
    await io.write(payload)
    await io.read()
    if (i >= 100) rtt.push(performance.now() - t0)
  }
  stream.abort(new Error('done'))
  out[kind] = { setup_median_ms: median(setup), setup_p90_ms: pct(setup, 0.9), rtt_median_ms: median(rtt), rtt_p99_ms: pct(rtt, 0.99) }
  console.log(`${kind}: dial + first ${payload.length}-byte round trip median ${median(setup).toFixed(2)} ms (p90 ${pct(setup, 0.9).toFixed(2)}); ${payload.length}-byte round trip median ${median(rtt).toFixed(3)} ms, p99 ${pct(rtt, 0.99).toFixed(3)} ms`)
}
console.log(JSON.stringify(out))
await client.stop()
await server.stop()
