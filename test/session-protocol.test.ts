// The session protocol survives hostile input. One process holds a server node serving blocks
// [0, 2) of tiny-llama and a client node. Every attack must get an `error` frame whose code and
// message name the problem, after which the server closes the stream; an honest session opened
// before the attacks keeps generating the right floats, and no attacker's session leaks.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import type { PrivateKey } from '@libp2p/interface'
import type { Stream, Connection } from '@libp2p/interface'
import { createPlexusNode } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { WIRE_VERSION, encodeMessage, decodeMessage } from '@plexus/protocol'
import { SESSION_PROTOCOL } from '@plexus/p2p'
import type { SessionMessage, ErrorCode } from '@plexus/protocol'
import { initBackend, Checkpoint, Span, ModelHead, loadManifest, inProcessRunner, f32ToF16, seededRandom } from '@plexus/runtime'
import type { ModelManifest } from '@plexus/runtime'
import { BlockBackend, BackendSet } from '@plexus/server'
import { createSessionHandler } from '@plexus/server'
import { RemoteSpanSession } from '@plexus/client'
import type { Dialer } from '@plexus/client'
import { fixtureDir, golden, maxAbsDiff } from './support/fixtures.ts'

const H = 64
const MAX_FRAME = 1 << 20
const TOL = 1e-4
const g = golden('tiny-llama')
const timings: Record<string, number> = {}
const IDLE_PROTOCOL = '/plexus/test/session-idle/1.0.0'
const IDLE_MS = 300

/** Deterministic bytes, so a failing seed can be replayed. */
const seeded = seededRandom
function randomBuf (seed: number, n: number): Uint8Array {
  const r = seeded(seed)
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256))
}

function varint (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) { out.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  out.push(n)
  return Uint8Array.from(out)
}

/** A frame payload with any header (valid or not) and any tensor bytes. */
function frame (header: unknown, tensor: Uint8Array = new Uint8Array(0), headerText?: string): Uint8Array {
  const hb = typeof headerText === 'string' ? new TextEncoder().encode(headerText) : new TextEncoder().encode(JSON.stringify(header))
  return rawFrame(hb, tensor)
}
function rawFrame (headerBytes: Uint8Array, tensor: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(6 + headerBytes.length + tensor.length)
  out[0] = WIRE_VERSION
  new DataView(out.buffer).setUint32(2, headerBytes.length)
  out.set(headerBytes, 6)
  out.set(tensor, 6 + headerBytes.length)
  return out
}
function f32Bytes (a: Float32Array): Uint8Array { return new Uint8Array(a.buffer, a.byteOffset, a.byteLength) }
const newId = (): string => randomBytes(16).toString('hex')

describe('session protocol under hostile input', function () {
  this.timeout(30_000)

  let ckpt: Checkpoint
  let manifest: ModelManifest
  let span: Span
  let head: ModelHead
  let backend: BlockBackend
  let server: PlexusNode
  let serverKey: PrivateKey
  let client: PlexusNode
  let dialer: Dialer
  /** Block inputs (embeddings of a SEQ-token sequence) and the span's outputs, rows of H. */
  let X: Float32Array
  let REF: Float32Array
  const SEQ = 128
  /** The honest session opened before any attack, stepped once after each. */
  let honest: RemoteSpanSession
  let honestPos = 0
  /** Server side: every session stream the handler saw, and how many handlers are running. */
  const serverStreams: Stream[] = []
  let running = 0
  const errorsSeen: Array<[ErrorCode, string]> = []

  const row = (a: Float32Array, from: number, n = 1): Float32Array => a.subarray(from * H, (from + n) * H)

  async function honestStep (n = 1): Promise<void> {
    assert.ok(honestPos + n <= SEQ, 'the honest sequence is used up: raise SEQ')
    const out = await honest.forward(row(X, honestPos, n).slice(), n)
    const d = maxAbsDiff(out, row(REF, honestPos, n))
    assert.ok(d < TOL, `honest session at position ${honestPos}: max abs diff ${d}`)
    honestPos += n
  }

  async function waitFor (cond: () => boolean, what: string, ms = 5000): Promise<void> {
    const until = Date.now() + ms
    while (!cond()) {
      if (Date.now() > until) assert.fail(`timed out waiting for ${what}`)
      await new Promise(resolve => setTimeout(resolve, 5))
    }
  }

  interface Raw { stream: Stream, io: ReturnType<typeof lpStream> }
  async function openRaw (protocol = SESSION_PROTOCOL): Promise<Raw> {
    const stream = await client.dialProtocol(server.peerId, protocol, { signal: AbortSignal.timeout(5000), maxOutboundStreams: 1024 })
    return { stream, io: lpStream(stream, { maxDataLength: MAX_FRAME, maxBufferSize: MAX_FRAME + 16 }) }
  }
  /** Bytes exactly as given, with no length prefix. */
  async function sendRaw (stream: Stream, bytes: Uint8Array): Promise<void> {
    if (!stream.send(bytes)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => { stream.removeEventListener('close', onClose); resolve() }
        const onClose = (): void => { stream.removeEventListener('drain', onDrain); reject(new Error('stream closed while writing')) }
        stream.addEventListener('drain', onDrain, { once: true })
        stream.addEventListener('close', onClose, { once: true })
      })
    }
  }
  async function request (r: Raw, msg: SessionMessage): Promise<SessionMessage> {
    await r.io.write(encodeMessage(msg))
    return decodeMessage((await r.io.read({ signal: AbortSignal.timeout(5000) })).subarray(), { hiddenSize: H })
  }
  /** Opens a session of the attacker's own on its stream. */
  async function openOwn (r: Raw, maxLength = 16): Promise<string> {
    const sessionId = newId()
    const reply = await request(r, { type: 'open', sessionId, modelId: manifest.id, start: 0, end: 2, maxLength })
    assert.equal(reply.type, 'opened', JSON.stringify(reply))
    return sessionId
  }
  async function stepOwn (r: Raw, sessionId: string, position: number, tokens: number, step = 0): Promise<Float32Array> {
    const reply = await request(r, { type: 'step', sessionId, step, position, tokens, hidden: H, dtype: 'f32', data: row(X, position, tokens).slice() })
    assert.equal(reply.type, 'result', JSON.stringify(reply))
    return (reply as any).data
  }

  /**
   * The server's answer must be one error frame (valid by the schema) with this code and a
   * message matching `re`; then the server closes the stream: nothing follows, the read side ends.
   */
  async function expectError (r: Raw, code: ErrorCode, re: RegExp, opts: { reset?: boolean } = {}): Promise<string> {
    const bytes = (await r.io.read({ signal: AbortSignal.timeout(5000) })).subarray()
    const msg = decodeMessage(bytes)
    assert.equal(msg.type, 'error', `expected an error frame, got ${JSON.stringify(msg)}`)
    if (msg.type !== 'error') throw new Error('unreachable')
    assert.equal(msg.code, code, `code ${msg.code} (${msg.message}), expected ${code}`)
    assert.match(msg.message, re)
    // the server closed its side: the next read ends (a clean end; a reset where allowed)
    await assert.rejects(r.io.read({ signal: AbortSignal.timeout(5000) }), (err: any) => {
      if (err.name === 'UnexpectedEOFError') return true
      if (opts.reset === true && err.name === 'StreamResetError') return true
      assert.fail(`after the error frame: ${err.name}: ${err.message}`)
    })
    assert.notEqual(r.stream.remoteWriteStatus, 'writable', 'the server did not close the stream')
    return msg.message
  }

  async function finish (r: Raw): Promise<void> {
    try { await r.stream.close({ signal: AbortSignal.timeout(2000) }) } catch { r.stream.abort(new Error('test done')) }
  }

  /** One hostile stream: attack, expect the error, close, and check that nothing leaked. */
  async function attack (code: ErrorCode, re: RegExp, fn: (r: Raw) => Promise<void>, opts: { reset?: boolean, protocol?: string } = {}): Promise<string> {
    const r = await openRaw(opts.protocol)
    let message: string
    try {
      await fn(r)
      message = await expectError(r, code, re, opts)
    } finally { await finish(r) }
    // the server freed the attacker's sessions before closing: only the honest one is left
    assert.equal(backend.sessionCount, 1, 'sessions leaked')
    assert.equal(backend.reservedBytes, backend.cacheBytes(2, SEQ), 'KV-cache reservations leaked')
    await honestStep()
    return message
  }

  before(async function () {
    this.timeout(60_000)
    const t0 = Date.now()
    await initBackend('wasm')
    ckpt = await Checkpoint.open(fixtureDir('tiny-llama'))
    manifest = await loadManifest(ckpt, { write: false })
    head = await ModelHead.load(ckpt)
    span = await Span.load(ckpt, 0, 2, { blockDigests: manifest.blockDigests })
    assert.equal(ckpt.config.hiddenSize, H)

    // the reference: one local prefill of the whole sequence through blocks [0, 2)
    const ids = [...g.prompt_ids, ...g.greedy_new_ids]
    while (ids.length < SEQ) ids.push((ids.length * 37 + 11) % ckpt.config.vocabSize)
    X = head.embed(ids)
    REF = await span.forward(X, SEQ, span.newCache(SEQ))
    const T = g.prompt_ids.length
    const h = g.hidden_at_block_boundaries.h
    assert.ok(maxAbsDiff(row(X, 0, T), h[0].flat()) < TOL, 'embeddings differ from the golden reference')
    assert.ok(maxAbsDiff(row(REF, 0, T), h[2].flat()) < TOL, 'local span differs from the golden reference')

    // one client peer opens every session here: no per-peer caps (hardening-budgets.test.ts tests those)
    backend = new BlockBackend({ runner: inProcessRunner(span), config: ckpt.config }, { modelId: manifest.id, maxSessions: 128, maxSessionsPerPeer: 128, maxPeerCacheShare: 1 })
    serverKey = await generateKeyPair('Ed25519')
    server = await createPlexusNode({ privateKey: serverKey, dhtMode: 'server' })
    const handler = createSessionHandler({ backends: BackendSet.of(backend), privateKey: serverKey, log: server.logger.forComponent('plexus:test:session') }, {
      maxFrameBytes: MAX_FRAME,
      onError: (code, message) => { errorsSeen.push([code, message]) }
    })
    await server.handle(SESSION_PROTOCOL, async (stream: Stream, conn: Connection) => {
      serverStreams.push(stream)
      running++
      try { await handler(stream, conn) } finally { running-- }
    }, { maxInboundStreams: 1024 })
    // the same backend behind a handler with a short idle timeout, for clients that go quiet
    const idleHandler = createSessionHandler({ backends: BackendSet.of(backend), privateKey: serverKey, log: server.logger.forComponent('plexus:test:session-idle') }, { maxFrameBytes: MAX_FRAME, idleTimeoutMs: IDLE_MS })
    await server.handle(IDLE_PROTOCOL, async (stream: Stream, conn: Connection) => {
      serverStreams.push(stream)
      running++
      try { await idleHandler(stream, conn) } finally { running-- }
    }, { maxInboundStreams: 1024 })
    client = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
    await client.dial(server.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
    dialer = {
      dialProtocol: async (peer, protocol, o) => await client.dialProtocol(peer, protocol, { ...o, maxOutboundStreams: 1024 })
    }

    // the honest session, mid-generation before the first attack: a 4-token prefill, then steps
    honest = await RemoteSpanSession.open(dialer, {
      peer: server.peerId.toString(), target: server.peerId, modelId: manifest.id, start: 0, end: 2, maxLength: SEQ, hiddenSize: H
    })
    await honestStep(4)
    assert.equal(backend.sessionCount, 1)
    timings.setupMs = Date.now() - t0
  })

  after(async function () {
    this.timeout(20_000)
    await honest?.close()
    await client?.stop()
    await server?.stop()
    await backend?.dispose() // disposes the span too
    head?.dispose()
    await ckpt?.close()
    console.log(`      timings: ${JSON.stringify(timings)}`)
  })

  describe('garbage on the wire', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      it(`random bytes inside a well-formed length prefix (seed ${seed})`, async () => {
        const n = 1 + Math.floor(seeded(seed * 7919)() * 4096)
        await attack('bad-frame', /wire version|preamble|header length|not valid JSON|not a JSON object|message type/, async r => {
          await r.io.write(randomBuf(seed, n))
        })
      })
    }

    for (const seed of [11, 12, 13, 14, 15, 16]) {
      it(`random bytes with no framing at all, then the client's FIN (seed ${seed})`, async () => {
        const n = 1 + Math.floor(seeded(seed * 104729)() * 8192)
        await attack('bad-frame', /too large|truncated|length prefix|wire version|preamble|header length|not valid JSON|not a JSON object|message type/, async r => {
          await sendRaw(r.stream, randomBuf(seed, n))
          await r.stream.close()
        })
      })
    }

    it('a version-1 preamble followed by random header bytes', async () => {
      await attack('bad-frame', /not valid JSON/, async r => {
        await r.io.write(rawFrame(randomBuf(21, 300)))
      })
    })

    it('a length prefix that never ends (0xff forever) is refused, not buffered', async () => {
      // no FIN: the server must notice by itself, within the varint's few bytes
      await attack('bad-frame', /length prefix runs past 8 bytes/, async r => {
        await sendRaw(r.stream, new Uint8Array(4096).fill(0xff))
      })
    })

    it('a length prefix padded beyond what the largest frame needs', async () => {
      await attack('bad-frame', /length prefix of 5 bytes is too long/, async r => {
        await sendRaw(r.stream, Uint8Array.of(0x86, 0x80, 0x80, 0x80, 0x00, 1, 0, 0, 0, 0, 0))
      })
    })

    it('a truncated frame: the prefix promises more than is sent, then the client\'s FIN', async () => {
      const f = encodeMessage({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 0, end: 2, maxLength: 8 })
      const msg = await attack('bad-frame', /truncated/, async r => {
        await sendRaw(r.stream, varint(f.length))
        await sendRaw(r.stream, f.subarray(0, 20))
        await r.stream.close()
      })
      assert.match(msg, new RegExp(`inside a frame of ${f.length} bytes .*20/${f.length}`))
    })

    it('a client that stops inside a frame, holding a session, is cut off after the idle timeout', async () => {
      const t0 = Date.now()
      await attack('bad-request', /no message for 0.3 s/, async r => {
        await openOwn(r)
        assert.equal(backend.sessionCount, 2)
        await sendRaw(r.stream, varint(1000))
        await sendRaw(r.stream, new Uint8Array(10))
      }, { protocol: IDLE_PROTOCOL })
      assert.ok(Date.now() - t0 >= IDLE_MS)
    })

    it('a truncated length prefix, then the client\'s FIN', async () => {
      await attack('bad-frame', /truncated frame: the stream ended inside a length prefix/, async r => {
        await sendRaw(r.stream, Uint8Array.of(0x80))
        await r.stream.close()
      })
    })

    it('a truncated frame after a good session: the session is freed', async () => {
      const r = await openRaw()
      try {
        const id = await openOwn(r)
        await stepOwn(r, id, 0, 3)
        assert.equal(backend.sessionCount, 2)
        await sendRaw(r.stream, varint(1000))
        await sendRaw(r.stream, new Uint8Array(100))
        await r.stream.close()
        await expectError(r, 'bad-frame', /truncated/)
      } finally { await finish(r) }
      assert.equal(backend.sessionCount, 1)
      await honestStep()
    })

    it('an oversized frame (2 MiB against a 1 MiB limit) is refused at its length prefix, not buffered', async () => {
      const t0 = Date.now()
      const big = new Uint8Array(2 << 20)
      big.set(frame({ type: 'step', sessionId: newId(), step: 0, position: 0, tokens: (big.length - 200) / 256, hidden: H, dtype: 'f32' }))
      let sent = 0
      let writeError: Error | undefined
      const first = serverStreams.length
      await attack('bad-frame', /frame of 2097152 bytes is too large \(limit 1048576 bytes\)/, async r => {
        // the client keeps writing (the rest of the frame, then 30 MiB more junk) while reading
        void (async () => {
          try {
            await sendRaw(r.stream, varint(big.length))
            for (let off = 0; off < big.length; off += 64 << 10) { await sendRaw(r.stream, big.subarray(off, off + (64 << 10))); sent += 64 << 10 }
            for (let i = 0; i < 30 * 16; i++) { await sendRaw(r.stream, new Uint8Array(64 << 10)); sent += 64 << 10 }
          } catch (err: any) { writeError = err }
        })()
      }, { reset: true })
      // the junk is refused rather than accumulated: the server's stream ends (aborted once its
      // read buffer passes the limit) and the writer fails long before its 32 MiB are through
      assert.equal(serverStreams.length, first + 1)
      await waitFor(() => serverStreams[first].status !== 'open', 'the server to end the oversized stream')
      await waitFor(() => writeError != null || sent >= 32 << 20, 'the junk writer to stop')
      assert.ok(writeError != null, `the server accepted all ${sent} bytes`)
      assert.ok(sent < 24 << 20, `the server accepted ${sent} bytes after refusing the frame`)
      timings.oversizedMs = Date.now() - t0
      timings.oversizedBytesSent = sent
    })

    it('a header that is not JSON', async () => {
      await attack('bad-frame', /not valid JSON/, async r => { await r.io.write(frame(null, undefined, '{"type":"open",')) })
    })

    it('a header that is JSON but not an object', async () => {
      await attack('bad-frame', /not a JSON object/, async r => { await r.io.write(frame([1, 2, 3])) })
    })

    it('a header nested 100 000 levels deep', async () => {
      await attack('bad-frame', /not a JSON object/, async r => { await r.io.write(frame(null, undefined, '['.repeat(100_000) + ']'.repeat(100_000))) })
    })

    it('invalid UTF-8 in the header', async () => {
      await attack('bad-frame', /not valid JSON/, async r => { await r.io.write(rawFrame(Uint8Array.of(0x7b, 0xc3, 0x28, 0x7d))) })
    })

    it('a wrong wire version', async () => {
      await attack('bad-frame', /wire version 2/, async r => {
        const f = encodeMessage({ type: 'close', sessionId: newId() })
        f[0] = 2
        await r.io.write(f)
      })
    })

    it('an empty frame', async () => {
      await attack('bad-frame', /shorter than its 6-byte preamble/, async r => { await r.io.write(new Uint8Array(0)) })
    })

    it('a header length beyond the frame', async () => {
      await attack('bad-frame', /header length 1000 exceeds/, async r => {
        const f = frame({ type: 'close', sessionId: newId() })
        new DataView(f.buffer).setUint32(2, 1000)
        await r.io.write(f)
      })
    })

    it('an unknown message type', async () => {
      await attack('bad-frame', /unknown message type "hello"/, async r => { await r.io.write(frame({ type: 'hello', sessionId: newId() })) })
    })

    it('an unknown message type 10 000 characters long (the error frame stays within the schema)', async () => {
      const msg = await attack('bad-frame', /unknown message type/, async r => { await r.io.write(frame({ type: 'x'.repeat(10_000) })) })
      assert.ok(msg.length <= 2000)
    })

    it('a message with an extra field', async () => {
      await attack('bad-frame', /additional properties \(evil\)/, async r => {
        await r.io.write(frame({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 0, end: 2, maxLength: 8, evil: true }))
      })
    })

    it('bytes after a message that carries no tensor', async () => {
      await attack('bad-frame', /open message carries 4 unexpected bytes/, async r => {
        await r.io.write(frame({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 0, end: 2, maxLength: 8 }, new Uint8Array(4)))
      })
    })

    for (const type of ['result', 'opened', 'truncated', 'error'] as const) {
      it(`a client sending a server-only message (${type})`, async () => {
        const sessionId = newId()
        const msgs: Record<string, SessionMessage> = {
          result: { type: 'result', sessionId, step: 0, position: 0, tokens: 1, hidden: H, dtype: 'f32', computeMs: 1, data: row(X, 0).slice() },
          opened: { type: 'opened', sessionId, start: 0, end: 2, length: 0 },
          truncated: { type: 'truncated', sessionId, length: 0 },
          error: { type: 'error', code: 'internal', message: 'you are wrong' }
        }
        await attack('bad-request', new RegExp(`may not send ${type} messages`), async r => { await r.io.write(encodeMessage(msgs[type])) })
      })
    }
  })

  describe('bad tensors', () => {
    const stepHeader = (sessionId: string, extra: Record<string, unknown> = {}): Record<string, unknown> =>
      ({ type: 'step', sessionId, step: 0, position: 0, tokens: 1, hidden: H, dtype: 'f32', ...extra })

    it('a wrong dtype in the header (f64)', async () => {
      await attack('bad-frame', /dtype/, async r => {
        const id = await openOwn(r)
        await r.io.write(frame(stepHeader(id, { dtype: 'f64' }), new Uint8Array(H * 8)))
      })
    })

    it('a wrong hidden size', async () => {
      await attack('bad-tensor', /hidden size 32 does not match the model's 64/, async r => {
        const id = await openOwn(r)
        await r.io.write(frame(stepHeader(id, { hidden: 32 }), new Uint8Array(32 * 4)))
      })
    })

    it('tensor bytes fewer than tokens × hidden', async () => {
      await attack('bad-tensor', /tensor has 256 bytes, but 2×64 f32 needs 512/, async r => {
        const id = await openOwn(r)
        await r.io.write(frame(stepHeader(id, { tokens: 2 }), f32Bytes(row(X, 0).slice())))
      })
    })

    it('tensor bytes more than tokens × hidden', async () => {
      await attack('bad-tensor', /tensor has 260 bytes, but 1×64 f32 needs 256/, async r => {
        const id = await openOwn(r)
        await r.io.write(frame(stepHeader(id), new Uint8Array(260)))
      })
    })

    it('an f16 tensor of odd length', async () => {
      await attack('bad-tensor', /tensor has 127 bytes, but 1×64 f16 needs 128/, async r => {
        const id = await openOwn(r)
        await r.io.write(frame(stepHeader(id, { dtype: 'f16' }), new Uint8Array(127)))
      })
    })

    for (const [name, value] of [['NaN', NaN], ['+Inf', Infinity], ['-Inf', -Infinity]] as const) {
      it(`${name} activations (f32)`, async () => {
        await attack('bad-tensor', new RegExp(`activation 70 \\(token 1\\) is ${String(value).replace('+', '')}`), async r => {
          const id = await openOwn(r)
          const data = row(X, 0, 2).slice()
          data[70] = value
          await r.io.write(frame(stepHeader(id, { tokens: 2 }), f32Bytes(data)))
        })
      })
    }

    it('Inf activations (f16: 0x7c00)', async () => {
      await attack('bad-tensor', /is Infinity/, async r => {
        const id = await openOwn(r)
        const bits = f32ToF16(row(X, 0).slice())
        bits[5] = 0x7c00
        await r.io.write(frame(stepHeader(id, { dtype: 'f16' }), new Uint8Array(bits.buffer)))
      })
    })

    it('NaN activations after good steps (the session had state)', async () => {
      await attack('bad-tensor', /is NaN/, async r => {
        const id = await openOwn(r)
        await stepOwn(r, id, 0, 2)
        const data = row(X, 2).slice()
        data[0] = NaN
        await r.io.write(frame(stepHeader(id, { position: 2, step: 1 }), f32Bytes(data)))
      })
    })
  })

  describe('bad positions and sessions', () => {
    for (const [name, position] of [['skip ahead', 5], ['go back', 1], ['restart at 0', 0]] as const) {
      it(`positions that ${name}`, async () => {
        await attack('bad-request', new RegExp(`position ${position} does not continue session .* which holds 3 positions`), async r => {
          const id = await openOwn(r)
          await stepOwn(r, id, 0, 3)
          await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 1, position, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 3).slice() }))
        })
      })
    }

    it('a step that rewinds: positions from it on are dropped first, and its output is the reference', async () => {
      const r = await openRaw()
      try {
        const id = await openOwn(r)
        await stepOwn(r, id, 0, 3)
        // two positions of junk (a rejected draft), then the rewind rides on the next step
        const junk = row(X, 40, 2).slice()
        const j = await request(r, { type: 'step', sessionId: id, step: 1, position: 3, tokens: 2, hidden: H, dtype: 'f32', data: junk })
        assert.equal(j.type, 'result')
        const reply = await request(r, { type: 'step', sessionId: id, step: 2, position: 3, tokens: 2, hidden: H, dtype: 'f32', data: row(X, 3, 2).slice(), rewind: true })
        assert.equal(reply.type, 'result', JSON.stringify(reply))
        const d = maxAbsDiff((reply as any).data, row(REF, 3, 2))
        assert.ok(d < TOL, `after the rewind: max abs diff ${d} from the reference (the junk positions left a trace)`)
        // and it continues from there
        const next = await stepOwn(r, id, 5, 1, 3)
        assert.ok(maxAbsDiff(next, row(REF, 5)) < TOL)
      } finally { r.stream.abort(new Error('done')) }
      await honestStep()
    })

    it('a rewind cannot skip ahead', async () => {
      await attack('bad-request', /position 5 does not continue session .* which holds 2 positions/, async r => {
        const id = await openOwn(r)
        await stepOwn(r, id, 0, 2)
        await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 1, position: 5, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 5).slice(), rewind: true }))
      })
    })

    it('a step beyond the session\'s max length', async () => {
      await attack('too-long', /positions up to 10 exceed the session's max length 8/, async r => {
        const id = await openOwn(r, 8)
        await stepOwn(r, id, 0, 6)
        await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 1, position: 6, tokens: 4, hidden: H, dtype: 'f32', data: row(X, 6, 4).slice() }))
      })
    })

    it('a truncate beyond the session\'s length', async () => {
      await attack('bad-request', /cannot truncate session .* to 5: it holds 2 positions/, async r => {
        const id = await openOwn(r)
        await stepOwn(r, id, 0, 2)
        await r.io.write(encodeMessage({ type: 'truncate', sessionId: id, length: 5 }))
      })
    })

    it('a step for an unknown session id', async () => {
      const id = newId()
      await attack('unknown-session', new RegExp(`unknown session ${id}`), async r => {
        await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 0, position: 0, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 0).slice() }))
      })
    })

    it('a step for a session closed earlier on the same stream', async () => {
      let id = ''
      await attack('closed-session', /session [0-9a-f]{32} is closed/, async r => {
        id = await openOwn(r)
        await stepOwn(r, id, 0, 1)
        await r.io.write(encodeMessage({ type: 'close', sessionId: id }))
        await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 1, position: 1, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 1).slice() }))
      })
    })

    it('a close for a session closed earlier on the same stream', async () => {
      await attack('closed-session', /is closed/, async r => {
        const id = await openOwn(r)
        await r.io.write(encodeMessage({ type: 'close', sessionId: id }))
        await r.io.write(encodeMessage({ type: 'close', sessionId: id }))
      })
    })

    it('a step for a session owned by another stream (the honest one)', async () => {
      await attack('bad-request', /belongs to another stream/, async r => {
        await r.io.write(encodeMessage({ type: 'step', sessionId: honest.sessionId, step: 0, position: honestPos, tokens: 1, hidden: H, dtype: 'f32', data: row(X, honestPos).slice() }))
      })
    })

    it('a truncate of a session owned by another stream', async () => {
      await attack('bad-request', /belongs to another stream/, async r => {
        await r.io.write(encodeMessage({ type: 'truncate', sessionId: honest.sessionId, length: 0 }))
      })
    })

    it('a close of a session owned by another stream', async () => {
      await attack('bad-request', /belongs to another stream/, async r => {
        await r.io.write(encodeMessage({ type: 'close', sessionId: honest.sessionId }))
      })
    })

    it('an open that reuses the id of a session owned by another stream', async () => {
      await attack('bad-request', /already exists/, async r => {
        await r.io.write(encodeMessage({ type: 'open', sessionId: honest.sessionId, modelId: manifest.id, start: 0, end: 2, maxLength: 8 }))
      })
    })

    it('an open that reuses the id of a session this stream already holds', async () => {
      await attack('bad-request', /already exists/, async r => {
        const id = await openOwn(r)
        await r.io.write(encodeMessage({ type: 'open', sessionId: id, modelId: manifest.id, start: 0, end: 2, maxLength: 8 }))
      })
    })

    it('a span the node does not serve ([1, 3) on a node serving [0, 2))', async () => {
      await attack('not-served', /blocks \[1, 3\) are not served here \(this node serves \[0, 2\)\)/, async r => {
        await r.io.write(encodeMessage({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 1, end: 3, maxLength: 8 }))
      })
    })

    it('an empty span ([1, 1))', async () => {
      await attack('not-served', /blocks \[1, 1\) are not served/, async r => {
        await r.io.write(encodeMessage({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 1, end: 1, maxLength: 8 }))
      })
    })

    it('a wrong model id', async () => {
      const other = 'ab'.repeat(32)
      await attack('not-served', new RegExp(`model ${other.slice(0, 12)} is not served here`), async r => {
        await r.io.write(encodeMessage({ type: 'open', sessionId: newId(), modelId: other, start: 0, end: 2, maxLength: 8 }))
      })
    })

    it('a max length beyond the model\'s context', async () => {
      await attack('too-long', /max length 1000 exceeds the model's context of 512/, async r => {
        await r.io.write(encodeMessage({ type: 'open', sessionId: newId(), modelId: manifest.id, start: 0, end: 2, maxLength: 1000 }))
      })
    })

    it('an attack after several good sessions on one stream frees them all', async () => {
      await attack('bad-tensor', /is NaN/, async r => {
        const ids = [await openOwn(r), await openOwn(r), await openOwn(r)]
        for (const id of ids) await stepOwn(r, id, 0, 2)
        assert.equal(backend.sessionCount, 4)
        const data = row(X, 2).slice()
        data.fill(NaN)
        await r.io.write(frame({ type: 'step', sessionId: ids[1], step: 1, position: 2, tokens: 1, hidden: H, dtype: 'f32' }, f32Bytes(data)))
      })
    })
  })

  describe('load', () => {
    it('50 concurrent honest sessions with garbage streams interleaved all complete correctly', async () => {
      const t0 = Date.now()
      // one event loop runs both nodes and the compute: its stalls delay libp2p's pings, and a
      // ping unanswered for 1–3 s (createPlexusNode's connection monitor) drops the connection
      const loop = monitorEventLoopDelay({ resolution: 10 })
      loop.enable()
      const N = 50
      const honestRun = async (i: number): Promise<void> => {
        const s = await RemoteSpanSession.open(dialer, {
          peer: server.peerId.toString(), target: server.peerId, modelId: manifest.id, start: 0, end: 2, maxLength: 16, hiddenSize: H
        })
        try {
          let pos = 0
          for (const n of [1 + (i % 4), 1, 1, 2]) {
            const out = await s.forward(row(X, pos, n).slice(), n)
            const d = maxAbsDiff(out, row(REF, pos, n))
            assert.ok(d < TOL, `session ${i} at position ${pos}: max abs diff ${d}`)
            pos += n
          }
        } finally { await s.close() }
      }
      const garbage: Array<[ErrorCode, RegExp, (r: Raw, k: number) => Promise<void>]> = [
        ['bad-frame', /./, async (r, k) => { await r.io.write(randomBuf(1000 + k, 777)) }],
        ['bad-frame', /./, async (r, k) => { await sendRaw(r.stream, randomBuf(2000 + k, 3000)); await r.stream.close() }],
        ['bad-tensor', /NaN/, async r => {
          const id = await openOwn(r)
          await stepOwn(r, id, 0, 2)
          const data = row(X, 2).slice(); data[3] = NaN
          await r.io.write(frame({ type: 'step', sessionId: id, step: 1, position: 2, tokens: 1, hidden: H, dtype: 'f32' }, f32Bytes(data)))
        }],
        ['unknown-session', /unknown session/, async r => {
          await r.io.write(encodeMessage({ type: 'step', sessionId: newId(), step: 0, position: 0, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 0).slice() }))
        }],
        ['bad-request', /position 7 does not continue/, async r => {
          const id = await openOwn(r)
          await r.io.write(encodeMessage({ type: 'step', sessionId: id, step: 0, position: 7, tokens: 1, hidden: H, dtype: 'f32', data: row(X, 7).slice() }))
        }],
        ['bad-frame', /truncated/, async r => { await sendRaw(r.stream, varint(5000)); await sendRaw(r.stream, new Uint8Array(1000)); await r.stream.close() }]
      ]
      const garbageRun = async (k: number): Promise<void> => {
        const [code, re, fn] = garbage[k % garbage.length]
        const r = await openRaw()
        try {
          await fn(r, k)
          await expectError(r, code, re)
        } finally { await finish(r) }
      }
      const tasks: Array<Promise<void>> = []
      let k = 0
      for (let i = 0; i < N; i++) {
        tasks.push(honestRun(i))
        if (i % 2 === 0) tasks.push(garbageRun(k++))
      }
      const results = await Promise.allSettled(tasks)
      loop.disable()
      timings.concurrentMs = Date.now() - t0
      timings.concurrentMaxLoopDelayMs = Math.round(loop.max / 1e6)
      const failed = results.filter(r => r.status === 'rejected') as PromiseRejectedResult[]
      assert.equal(failed.length, 0, `${failed.length} of ${tasks.length} failed (longest event-loop stall ${timings.concurrentMaxLoopDelayMs} ms):\n` +
        failed.slice(0, 3).map(f => String(f.reason?.stack ?? f.reason)).join('\n\n'))
      // every honest session closed itself; the garbage streams' sessions were freed
      await waitFor(() => backend.sessionCount === 1, 'the concurrent sessions to be freed')
      assert.equal(backend.reservedBytes, backend.cacheBytes(2, SEQ))
      await honestStep()
    })
  })

  describe('afterwards', () => {
    it('no session leaked: only the honest one is open, and none once it closes', async () => {
      assert.equal(backend.sessionCount, 1)
      assert.ok(honestPos > 60, `honest session went through ${honestPos} positions`)
      timings.honestPositions = honestPos
      await honestStep()
      await honest.close()
      await waitFor(() => backend.sessionCount === 0, 'the honest session to be freed')
      assert.equal(backend.reservedBytes, 0)
      assert.equal(backend.cacheBytesInUse(), 0)
      await waitFor(() => running === 0, 'every handler to return')
      // every server-side stream is done: none left half-open by an attack
      await waitFor(() => serverStreams.every(s => s.status === 'closed' || s.status === 'aborted' || s.status === 'reset'), 'server streams to close')
      // every error the server answered was reported to its observer
      assert.ok(errorsSeen.length >= 60, `${errorsSeen.length} errors observed`)
    })
  })
})
