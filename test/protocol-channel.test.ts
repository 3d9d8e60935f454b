// The framed channel every Plexus protocol runs on (packages/p2p/src/channel.ts): two real
// libp2p nodes over loopback, one serving test protocols through serveChannel and the real
// session handler, the other speaking raw bytes. A declared length over the limit is refused
// before its body is read, an idle stream is closed, a wrong version byte is named, every
// refusal has one shape, and a session's frames are sized by its model.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream, Connection } from '@libp2p/interface'
import { createPlexusNode, serveInfo, INFO_PROTOCOL, MAX_INFO_REQUEST_BYTES } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { ProtocolError, SESSION_PREAMBLE_BYTES, MAX_SESSION_HEADER_BYTES, WIRE_VERSION, encodeMessage, decodeMessage, sessionCodec, sessionFrameLimit } from '@plexus/protocol'
import { ByteBudget, Channel, ChannelError, DEFAULT_MAX_BUFFERED_BYTES, MAX_ERROR_MESSAGE, PROTOCOLS, errorReply, encodeVarint, serveChannel } from '@plexus/p2p'
import type { SessionMessage } from '@plexus/protocol'
import { BackendSet, createSessionHandler } from '@plexus/server'
import type { BlockBackend } from '@plexus/server'
import { SpanError } from '@plexus/runtime'

const ECHO = '/plexus/test/channel-echo/1.0.0'
const IDLE = '/plexus/test/channel-idle/1.0.0'
const SESSION = '/plexus/test/channel-session/1.0.0'
const LIMIT = 1024
const IDLE_MS = 250
const H = 64
const MAX_STEP = 8
const MODEL = 'cd'.repeat(32)
const newId = (): string => randomBytes(16).toString('hex')

/** A span stand-in of width H that answers every step with zeros: the channel is under test, not the math. */
function fakeBackend (): BlockBackend {
  const open = new Set<string>()
  return {
    modelId: MODEL,
    start: 0,
    end: 2,
    isDraining: false,
    config: { hiddenSize: H },
    maxStepTokens: MAX_STEP,
    has: (id: string) => open.has(id),
    wasClosed: () => false,
    open: async (id: string) => { open.add(id) },
    step: async (_id: string, _pos: number, tokens: number) => new Float32Array(tokens * H),
    close: async (id: string) => { open.delete(id) },
    sessionSpan: () => [0, 2]
  } as unknown as BlockBackend
}

describe('protocol channel: one framing for every protocol', function () {
  this.timeout(30_000)
  let server: PlexusNode
  let client: PlexusNode
  const served: Stream[] = []

  before(async () => {
    server = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server' })
    const log = server.logger.forComponent('plexus:test:channel')
    // echoes each session message's header back as an `opened`, refusing nothing itself
    const echo = (idleMs: number) => async (stream: Stream, conn: Connection): Promise<void> => {
      served.push(stream)
      await serveChannel(stream, conn.remotePeer.toString(), {
        name: 'echo',
        codec: sessionCodec(),
        log,
        limits: { maxFrameBytes: LIMIT, idleMs, writeMs: 1000 },
        dispatch: async (msg, channel) => {
          if (msg.type !== 'close') throw new ProtocolError('bad-request', `a client may not send ${msg.type} messages`)
          await channel.write(encodeMessage({ type: 'truncated', sessionId: msg.sessionId, length: 0 }))
        }
      })
    }
    await server.handle(ECHO, echo(5000))
    await server.handle(IDLE, echo(IDLE_MS))
    // the real session handler, its frames sized from its (fake) model: H wide, MAX_STEP tokens a step
    await server.handle(SESSION, createSessionHandler({ backends: BackendSet.of(fakeBackend()), log }))
    client = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
    await client.dial(server.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
  })

  after(async () => {
    await client?.stop()
    await server?.stop()
  })

  const dial = async (protocol: string): Promise<{ stream: Stream, channel: Channel }> => {
    const stream = await client.dialProtocol(server.peerId, protocol, { signal: AbortSignal.timeout(5000) })
    return { stream, channel: new Channel(stream, { ...PROTOCOLS.session.client, maxFrameBytes: 1 << 20 }) }
  }

  /** The one error frame the server answers, after which it closes its side. */
  async function refusal (channel: Channel): Promise<SessionMessage & { type: 'error' }> {
    const frame = await channel.read(AbortSignal.timeout(5000))
    assert.ok(frame != null, 'the server closed without an error frame')
    const msg = decodeMessage(frame)
    assert.equal(msg.type, 'error', JSON.stringify(msg))
    assert.equal(await channel.read(AbortSignal.timeout(5000)), null, 'the server did not close its side after the error')
    await channel.close()
    return msg as SessionMessage & { type: 'error' }
  }

  it('answers requests in order on one stream', async () => {
    const { channel } = await dial(ECHO)
    for (let i = 0; i < 3; i++) {
      const id = newId()
      const reply = decodeMessage(await channel.request(encodeMessage({ type: 'close', sessionId: id }), AbortSignal.timeout(5000)))
      assert.deepEqual(reply, { type: 'truncated', sessionId: id, length: 0 })
    }
    await channel.close()
  })

  it('a declared length over the limit is refused with the error reply before the body is read', async () => {
    const { stream, channel } = await dial(ECHO)
    // the prefix alone: no body follows and the write side stays open, so only the prefix can be judged
    stream.send(encodeVarint(LIMIT + 1))
    const t0 = Date.now()
    const err = await refusal(channel)
    assert.equal(err.code, 'bad-frame')
    assert.equal(err.message, `frame of ${LIMIT + 1} bytes is too large (limit ${LIMIT} bytes)`)
    assert.ok(Date.now() - t0 < 2000, 'the refusal waited for the body')
    await channel.close()
  })

  it('a frame at the limit is read', async () => {
    const { stream, channel } = await dial(ECHO)
    const header = new TextEncoder().encode(JSON.stringify({ type: 'close', sessionId: newId() }))
    const f = new Uint8Array(LIMIT)
    f[0] = WIRE_VERSION
    new DataView(f.buffer).setUint32(2, header.length)
    f.set(header, SESSION_PREAMBLE_BYTES)
    stream.send(encodeVarint(LIMIT))
    stream.send(f)
    // read as a whole: then refused for what it holds, not for its size
    const err = await refusal(channel)
    assert.equal(err.code, 'bad-frame')
    assert.match(err.message, new RegExp(`close message carries ${LIMIT - SESSION_PREAMBLE_BYTES - header.length} unexpected bytes`))
  })

  it('a stream idle past its deadline is closed with a named refusal', async () => {
    const { channel } = await dial(IDLE)
    const t0 = Date.now()
    const err = await refusal(channel)
    const waited = Date.now() - t0
    assert.equal(err.code, 'bad-request')
    assert.equal(err.message, `no message for ${IDLE_MS / 1000} s: closing the stream`)
    assert.ok(waited >= IDLE_MS - 20 && waited < IDLE_MS + 2000, `closed after ${waited} ms`)
    await channel.close()
  })

  it('a stream that keeps talking is not idle', async () => {
    const { channel } = await dial(IDLE)
    for (let i = 0; i < 4; i++) {
      await new Promise(resolve => setTimeout(resolve, IDLE_MS / 2))
      const reply = decodeMessage(await channel.request(encodeMessage({ type: 'close', sessionId: newId() }), AbortSignal.timeout(5000)))
      assert.equal(reply.type, 'truncated')
    }
    await channel.close()
  })

  it('a wrong version byte is refused, naming the version', async () => {
    const { channel } = await dial(ECHO)
    const f = encodeMessage({ type: 'close', sessionId: newId() })
    f[0] = 7
    await channel.write(f)
    const err = await refusal(channel)
    assert.equal(err.code, 'bad-frame')
    assert.equal(err.message, `unsupported wire version 7 (this node speaks ${WIRE_VERSION})`)
  })

  it('a length prefix that never ends is refused after 8 bytes', async () => {
    const { stream, channel } = await dial(ECHO)
    stream.send(new Uint8Array(64).fill(0xff))
    const err = await refusal(channel)
    assert.equal(err.code, 'bad-frame')
    assert.match(err.message, /^frame length prefix runs past 8 bytes/)
  })

  it('every refusal has one shape: a code and a bounded message', () => {
    const own = (e: unknown): e is ProtocolError => e instanceof ProtocolError
    const code = (e: ChannelError): 'bad-frame' | 'bad-request' => e.code === 'idle-timeout' ? 'bad-request' : 'bad-frame'
    assert.deepEqual(errorReply(new ProtocolError('busy', 'full'), own, code), { code: 'busy', message: 'full' })
    assert.deepEqual(errorReply(new ChannelError('frame-too-large', 'too big'), own, code), { code: 'bad-frame', message: 'too big' })
    assert.deepEqual(errorReply(new ChannelError('idle-timeout', 'quiet'), own, code), { code: 'bad-request', message: 'quiet' })
    assert.deepEqual(errorReply(new SpanError('position 3'), own, code), { code: 'bad-request', message: 'position 3' })
    assert.deepEqual(errorReply(new TypeError('x is undefined'), own, code), { code: 'internal', message: 'internal error: x is undefined' })
    const long = errorReply(new ProtocolError('bad-frame', 'y'.repeat(10_000)), own, code)
    assert.equal(long.message.length, MAX_ERROR_MESSAGE)
    assert.ok(long.message.endsWith('…'))
    // on the wire: the session's error frame, valid by its schema
    const wire = decodeMessage(encodeMessage({ type: 'error', ...long } as SessionMessage))
    assert.deepEqual(wire, { type: 'error', ...long })
  })

  describe('session frames sized by the model', () => {
    const step = (sessionId: string, tokens: number): SessionMessage =>
      ({ type: 'step', sessionId, step: 0, position: 0, tokens, hidden: H, dtype: 'f32', data: new Float32Array(tokens * H).fill(0.5) })

    async function openSession (): Promise<{ stream: Stream, channel: Channel, id: string }> {
      const { stream, channel } = await dial(SESSION)
      const id = newId()
      const reply = decodeMessage(await channel.request(encodeMessage({ type: 'open', sessionId: id, modelId: MODEL, start: 0, end: 2, maxLength: 64 }), AbortSignal.timeout(5000)))
      assert.equal(reply.type, 'opened', JSON.stringify(reply))
      return { stream, channel, id }
    }

    it('the limit is the largest step plus preamble and header', () => {
      assert.equal(sessionFrameLimit({ hiddenSize: H, maxStepTokens: MAX_STEP }), SESSION_PREAMBLE_BYTES + MAX_SESSION_HEADER_BYTES + H * MAX_STEP * 4)
    })

    it(`a step of ${MAX_STEP} tokens (the most) fits`, async () => {
      const { channel, id } = await openSession()
      const reply = decodeMessage(await channel.request(encodeMessage(step(id, MAX_STEP)), AbortSignal.timeout(5000)))
      assert.equal(reply.type, 'result', JSON.stringify(reply))
      assert.equal((reply as any).tokens, MAX_STEP)
      await channel.close()
    })

    it(`a step of ${MAX_STEP + 1} tokens is refused too-long from its header, before its tensor is sent`, async () => {
      const { stream, channel, id } = await openSession()
      const f = encodeMessage(step(id, MAX_STEP + 1))
      const headerEnd = SESSION_PREAMBLE_BYTES + new DataView(f.buffer).getUint32(2)
      // prefix, preamble and header only: the refusal cannot have waited for the tensor
      stream.send(encodeVarint(f.length))
      stream.send(f.subarray(0, headerEnd))
      const err = await refusal(channel)
      assert.equal(err.code, 'too-long')
      assert.equal(err.message, `step of ${MAX_STEP + 1} tokens exceeds the limit of ${MAX_STEP} tokens per step`)
    })

    it('a frame over the derived limit is refused at its prefix', async () => {
      const { stream, channel } = await openSession()
      const limit = sessionFrameLimit({ hiddenSize: H, maxStepTokens: MAX_STEP })
      stream.send(encodeVarint(limit + 1))
      const err = await refusal(channel)
      assert.equal(err.code, 'bad-frame')
      assert.equal(err.message, `frame of ${limit + 1} bytes is too large (limit ${limit} bytes)`)
    })
  })

  it('a write the peer never drains aborts the stream after the write deadline', async () => {
    const PAUSED = '/plexus/test/channel-paused/1.0.0'
    let held: Stream | undefined
    await server.handle(PAUSED, async (stream: Stream) => {
      // reads nothing, and holds what arrives without resetting: the writer must stop by itself
      stream.maxReadBufferLength = 256 << 20
      stream.pause()
      held = stream
    })
    try {
      const stream = await client.dialProtocol(server.peerId, PAUSED, { signal: AbortSignal.timeout(5000) })
      const channel = new Channel(stream, { maxFrameBytes: 1 << 20, writeMs: 300 })
      const t0 = Date.now()
      let sent = 0
      const err = await (async () => {
        try {
          for (; sent < 256; sent++) await channel.write(new Uint8Array(1 << 20))
        } catch (e) { return e as Error }
      })()
      assert.ok(err instanceof ChannelError, `the writer was not stopped (${sent} MiB sent): ${String(err)}`)
      assert.equal(err.code, 'write-timeout')
      assert.ok(Date.now() - t0 < 10_000)
      assert.equal(stream.status, 'aborted')
    } finally {
      held?.abort(new Error('test done'))
      await server.unhandle(PAUSED)
    }
  })

  it('info runs on it too: one request, one answer, the JSON error reply for a refusal', async () => {
    const remove = await serveInfo(server, async () => [])
    const ask = async (send: (stream: Stream) => void): Promise<any> => {
      const stream = await client.dialProtocol(server.peerId, INFO_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      const channel = new Channel(stream, PROTOCOLS.info.client)
      send(stream)
      const frame = await channel.read(AbortSignal.timeout(5000))
      assert.ok(frame != null, 'the server closed without an answer')
      // one answer per stream: the server closes its side after it, whether or not we close ours
      assert.equal(await channel.read(AbortSignal.timeout(5000)), null, 'the server did not close its side after answering')
      await channel.close()
      return JSON.parse(new TextDecoder().decode(frame))
    }
    try {
      assert.equal(PROTOCOLS.info.id, INFO_PROTOCOL)
      assert.deepEqual(await ask(s => s.send(Uint8Array.of(2, 0x7b, 0x7d))), { records: [] })
      assert.deepEqual(await ask(s => s.send(Uint8Array.of(2, 0x5b, 0x5d))), { error: 'info request is not a JSON object', code: 'bad-request' })
      // refused at its prefix, as on every protocol
      assert.deepEqual(await ask(s => s.send(encodeVarint(MAX_INFO_REQUEST_BYTES + 1))),
        { error: `frame of ${MAX_INFO_REQUEST_BYTES + 1} bytes is too large (limit ${MAX_INFO_REQUEST_BYTES} bytes)`, code: 'bad-request' })
    } finally {
      await remove()
    }
  })

  describe('a node-wide budget of buffered bytes', () => {
    const BUDGETED = '/plexus/test/channel-budgeted/1.0.0'
    // 1 MiB for the node, half of it per peer; each hostile frame declares 240 KiB:
    // two fit per peer, four in the node, whatever order the streams arrive in
    const budget = new ByteBudget({ maxBytes: 1 << 20, peerShare: 0.5 })
    const DECLARED = 240 << 10
    const peers: PlexusNode[] = []

    before(async () => {
      const log = server.logger.forComponent('plexus:test:budget')
      await server.handle(BUDGETED, async (stream: Stream, conn: Connection) => {
        await serveChannel(stream, conn.remotePeer.toString(), {
          name: 'budgeted',
          codec: sessionCodec(),
          log,
          budget,
          limits: { maxFrameBytes: 256 << 10, idleMs: 20_000, writeMs: 1000 },
          dispatch: async (msg, channel) => {
            // a truncate is handled slowly: what the peer sends meanwhile waits in the buffer
            if (msg.type === 'truncate') await new Promise(resolve => setTimeout(resolve, 1500))
            else if (msg.type !== 'close') throw new ProtocolError('bad-request', `a client may not send ${msg.type} messages`)
            await channel.write(encodeMessage({ type: 'truncated', sessionId: msg.sessionId, length: 0 }))
          }
        })
      }, { maxInboundStreams: 64 })
      for (let i = 0; i < 3; i++) {
        const p = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
        await p.dial(server.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
        peers.push(p)
      }
    })

    after(async () => {
      await server.unhandle(BUDGETED)
      for (const p of peers) await p.stop()
    })

    it('every node has one, 256 MiB by default, a quarter of it per peer', () => {
      assert.equal(server.services.plexus.budget.maxBytes, DEFAULT_MAX_BUFFERED_BYTES)
      assert.equal(server.services.plexus.budget.maxPeerBytes, DEFAULT_MAX_BUFFERED_BYTES / 4)
    })

    it('slow large frames from several peers cannot hold more than the budget; the excess is refused busy; an honest request still succeeds', async () => {
      const attackers = [client, peers[0], peers[1]]
      const streams: Stream[] = []
      const outcomes: Array<Promise<'held' | SessionMessage>> = []
      for (const a of attackers) {
        for (let i = 0; i < 3; i++) {
          const stream = await a.dialProtocol(server.peerId, BUDGETED, { signal: AbortSignal.timeout(5000) })
          const channel = new Channel(stream, { maxFrameBytes: 1 << 20 })
          // the prefix and a trickle of the body: the rest never comes
          stream.send(encodeVarint(DECLARED))
          stream.send(new Uint8Array(1024))
          streams.push(stream)
          outcomes.push(channel.read(AbortSignal.timeout(1500)).then(f => f == null ? 'held' : decodeMessage(f), () => 'held'))
        }
      }
      const results = await Promise.all(outcomes)
      const refused = results.filter((r): r is SessionMessage & { type: 'error' } => r !== 'held' && r.type === 'error')
      assert.equal(results.filter(r => r === 'held').length, 4, JSON.stringify(results))
      assert.equal(refused.length, 5)
      for (const r of refused) {
        assert.equal(r.code, 'busy')
        assert.match(r.message, /^busy: a frame of 245760 bytes is over (this peer's share of )?the node's buffered-bytes budget \((0\.5|1) MiB, \d+ bytes held\)$/)
      }
      assert.equal(budget.used, 4 * DECLARED)
      assert.ok(budget.highWater <= budget.maxBytes, `high-water mark ${budget.highWater} over ${budget.maxBytes}`)

      // an honest peer's small request fits in what is left
      const honest = peers[2]
      const stream = await honest.dialProtocol(server.peerId, BUDGETED, { signal: AbortSignal.timeout(5000) })
      const channel = new Channel(stream, { maxFrameBytes: 1 << 20 })
      const id = newId()
      assert.deepEqual(decodeMessage(await channel.request(encodeMessage({ type: 'close', sessionId: id }), AbortSignal.timeout(5000))), { type: 'truncated', sessionId: id, length: 0 })
      await channel.close()
      assert.ok(budget.highWater <= budget.maxBytes)

      // what a stream held is given back when it ends
      for (const s of streams) s.abort(new Error('test done'))
      const until = Date.now() + 5000
      while (budget.used > 0 && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
      assert.equal(budget.used, 0)
    })

    it('bytes sent ahead of a frame being handled are charged too: past its share the stream is cut off', async () => {
      const peer = peers[0]
      const streams: Stream[] = []
      // each stream's small frame is being handled while 250 KiB more arrive: 64 KiB of slack,
      // the rest charged, so the third stream takes the peer past its 512 KiB share
      for (let i = 0; i < 4; i++) {
        const stream = await peer.dialProtocol(server.peerId, BUDGETED, { signal: AbortSignal.timeout(5000) })
        const f = encodeMessage({ type: 'truncate', sessionId: newId(), length: 0 })
        stream.send(encodeVarint(f.byteLength))
        stream.send(f)
        await new Promise(resolve => setTimeout(resolve, 50))
        stream.send(new Uint8Array(250 << 10))
        streams.push(stream)
      }
      await new Promise(resolve => setTimeout(resolve, 500))
      const me = peer.peerId.toString()
      assert.ok(budget.peerUsed(me) <= budget.maxPeerBytes, `peer holds ${budget.peerUsed(me)} bytes, over its share`)
      const cut = streams.filter(s => s.status !== 'open')
      assert.ok(cut.length >= 1 && cut.length <= 2, `streams cut off: ${cut.length}`)
      for (const s of streams) s.abort(new Error('test done'))
      const until = Date.now() + 5000
      while (budget.used > 0 && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
      assert.equal(budget.used, 0)
    })
  })

  describe('afterwards', () => {
    it('no served stream is left open', async () => {
      const until = Date.now() + 5000
      while (served.some(s => s.status === 'open') && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
      assert.deepEqual(served.filter(s => s.status === 'open').map(s => `${s.id}: ${s.status}`), [])
    })
  })
})
