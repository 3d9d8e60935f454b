// `node scripts/bench-hop.ts [--hidden 768] [--iterations 2000]`: where a hop's time goes apart from
// the span's compute. Each piece of one decode step's path is timed on its own, in one process:
// frame encoding and decoding (JSON header, schema, tensor copy, finiteness check), BLAKE3 digests,
// signing and verifying the step commitment, a worker thread's round trip (how a server hands the
// step to its span worker), and a frame's round trip over a real libp2p connection (TCP, noise,
// yamux, length prefixes) with a tiny frame and with a step-sized one.
import { parseArgs } from 'node:util'
import { Worker } from 'node:worker_threads'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { createPlexusNode } from '@plexus/p2p'
import { encodeMessage, decodeMessage, tensorDigest, signCommitment, verifyCommitment } from '@plexus/protocol'
import type { StepMessage } from '@plexus/protocol'
import { median } from './lib/bench-common.ts'

const { values: a } = parseArgs({ options: { hidden: { type: 'string', default: '768' }, iterations: { type: 'string', default: '2000' }, 'json-only': { type: 'boolean', default: false } } })
const hidden = Number(a.hidden)
const N = Number(a.iterations)
const data = Float32Array.from({ length: hidden }, (_, i) => Math.sin(i))
const step: StepMessage = { type: 'step', sessionId: 'ab'.repeat(16), step: 7, position: 40, tokens: 1, hidden, dtype: 'f32', data }

/** Median µs of `fn` over `n` calls (after a warm-up). */
async function time (n: number, fn: () => unknown): Promise<number> {
  for (let i = 0; i < Math.min(200, n); i++) await fn()
  const xs: number[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await fn()
    xs.push((performance.now() - t0) * 1000)
  }
  return median(xs)
}

const key = await generateKeyPair('Ed25519')
const frame = encodeMessage(step)
const body = { modelId: 'cd'.repeat(32), start: 0, end: 4, sessionId: step.sessionId, step: 7, position: 40, tokens: 1, inputDigest: await tensorDigest(data), outputDigest: await tensorDigest(data) }
const signed = await signCommitment(key, body)
const us: Record<string, number> = {}
us.encode_frame = await time(N, () => encodeMessage(step))
us.decode_frame = await time(N, () => decodeMessage(frame, { requireFinite: true, hiddenSize: hidden }))
us.blake3_digest = await time(N, async () => await tensorDigest(data))
us.sign_commitment = await time(N, async () => await signCommitment(key, body))
const signer = peerIdFromPrivateKey(key).toString()
us.verify_commitment = await time(N, () => verifyCommitment(signed, { expectedPeer: signer, expected: body }))

// a span worker's hand-off: the step's rows to a worker thread and its output back
const worker = new Worker('const { parentPort } = require("node:worker_threads"); parentPort.on("message", (m) => parentPort.postMessage(m))', { eval: true })
us.worker_round_trip = await time(Math.min(N, 1000), async () => await new Promise<void>(resolve => { worker.once('message', () => resolve()); worker.postMessage(data) }))
await worker.terminate()

// a frame there and back over libp2p on loopback, as a session stream carries it
const PROTO = '/plexus-bench/echo/1.0.0'
const server = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], dhtMode: 'client' })
const client = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client' })
await server.handle(PROTO, async (stream) => {
  const io = lpStream(stream, { maxDataLength: 1 << 24 })
  try { for (;;) await io.write((await io.read()).subarray()) } catch {}
})
const stream = await client.dialProtocol(server.getMultiaddrs()[0], PROTO)
const io = lpStream(stream, { maxDataLength: 1 << 24 })
const tiny = new Uint8Array(16)
us.libp2p_round_trip_16_bytes = await time(Math.min(N, 1000), async () => { await io.write(tiny); await io.read() })
us[`libp2p_round_trip_step_frame_${frame.length}_bytes`] = await time(Math.min(N, 1000), async () => { await io.write(frame); await io.read() })
// the same frame with its length prefix in one buffer, sent as one chunk (what writeFrame does)
const one = withPrefix(frame)
us[`libp2p_round_trip_step_frame_one_chunk`] = await time(Math.min(N, 1000), async () => { stream.send(one); await io.read() })
await stream.close()
await client.stop()
await server.stop()

function withPrefix (f: Uint8Array): Uint8Array {
  const p: number[] = []
  let n = f.length
  while (n >= 128) { p.push((n & 0x7f) | 0x80); n >>>= 7 }
  p.push(n)
  const out = new Uint8Array(p.length + f.length)
  out.set(p)
  out.set(f, p.length)
  return out
}

const result = { hidden, iterations: N, median_us: us }
if (a['json-only'] !== true) {
  process.stdout.write('| piece (one decode step, hidden ' + hidden + ') | median µs |\n| --- | --- |\n')
  for (const [k, v] of Object.entries(us)) process.stdout.write(`| ${k.replace(/_/g, ' ')} | ${v.toFixed(1)} |\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
