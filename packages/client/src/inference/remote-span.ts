import { randomBytes } from 'node:crypto'
import { lpStream } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import { SESSION_PROTOCOL, encodeMessage, decodeMessage, encodeTensor, decodeTensor, tensorDigest, verifyCommitment } from '@plexus/protocol'
import type { SessionMessage, StepMessage, WireDType, ErrorCode, StepCommitment } from '@plexus/protocol'

/** The server answered with an error frame (`busy`, `not-served`, ...). */
export class RemoteError extends Error {
  readonly code: ErrorCode
  readonly peer: string
  constructor (peer: string, code: ErrorCode, message: string) {
    super(`${peer.slice(-8)}: ${message}`)
    this.name = 'RemoteError'
    this.code = code
    this.peer = peer
  }
}

/** The server could not be reached, died, hung, or broke the protocol. */
export class PeerFailure extends Error {
  readonly peer: string
  constructor (peer: string, message: string, opts?: { cause?: unknown }) {
    super(`${peer.slice(-8)}: ${message}`, opts)
    this.name = 'PeerFailure'
    this.peer = peer
  }
}

export interface Dialer {
  dialProtocol (peer: any, protocol: string, opts: { signal: AbortSignal }): Promise<Stream>
}

export interface RemoteSpanInit {
  peer: string
  /** What to dial: a PeerId object or multiaddr the dialer understands. */
  target: unknown
  modelId: string
  start: number
  end: number
  maxLength: number
  hiddenSize: number
  dtype?: WireDType
  /** Deadline for one step's answer (a hung server is abandoned after it). */
  stepTimeoutMs?: number
  openTimeoutMs?: number
  maxFrameBytes?: number
  /** Refuse results without a valid signed step commitment (default: required). */
  requireCommitments?: boolean
}

/** One session on one server: blocks `[start, end)`, one step in flight at a time. */
export class RemoteSpanSession {
  readonly peer: string
  readonly start: number
  readonly end: number
  readonly sessionId: string
  private readonly stream: Stream
  private readonly io: ReturnType<typeof lpStream>
  private readonly init: RemoteSpanInit
  private step = 0
  length = 0
  /** Server-reported compute time of the last step, ms. */
  lastComputeMs = 0
  /** Wall time of the last step as the client saw it, ms (minus compute: the hop's overhead). */
  lastWallMs = 0
  /** The server's signed commitments to every step of this session: evidence for verification. */
  readonly commitments: StepCommitment[] = []
  /** The last step as the server committed to it: its signed text, input (as the server decoded it) and output. */
  lastStep?: { commitment: string, input: Float32Array, output: Float32Array }

  private constructor (init: RemoteSpanInit, stream: Stream, sessionId: string) {
    this.init = init
    this.peer = init.peer
    this.start = init.start
    this.end = init.end
    this.stream = stream
    this.sessionId = sessionId
    const max = init.maxFrameBytes ?? 64 << 20
    this.io = lpStream(stream, { maxDataLength: max, maxBufferSize: max + 16 })
  }

  static async open (dialer: Dialer, init: RemoteSpanInit): Promise<RemoteSpanSession> {
    let stream: Stream
    const signal = AbortSignal.timeout(init.openTimeoutMs ?? 10_000)
    try {
      stream = await dialer.dialProtocol(init.target, SESSION_PROTOCOL, { signal })
    } catch (err: any) {
      throw new PeerFailure(init.peer, `cannot open a session stream: ${err.message}`, { cause: err })
    }
    const s = new RemoteSpanSession(init, stream, randomBytes(16).toString('hex'))
    await s.request({ type: 'open', sessionId: s.sessionId, modelId: init.modelId, start: init.start, end: init.end, maxLength: init.maxLength }, 'opened', signal)
    return s
  }

  private async request (msg: SessionMessage, expect: SessionMessage['type'], signal: AbortSignal): Promise<SessionMessage> {
    let reply: SessionMessage
    try {
      await this.io.write(encodeMessage(msg), { signal })
      reply = decodeMessage((await this.io.read({ signal })).subarray(), { hiddenSize: this.init.hiddenSize })
    } catch (err: any) {
      this.stream.abort(err)
      const why = err.name === 'TimeoutError' || err.name === 'AbortError' ? 'no answer in time (hung?)' : err.message
      throw new PeerFailure(this.peer, why, { cause: err })
    }
    if (reply.type === 'error') {
      this.stream.abort(new Error(reply.message))
      throw new RemoteError(this.peer, reply.code, reply.message)
    }
    if (reply.type !== expect) {
      this.stream.abort(new Error('protocol violation'))
      throw new PeerFailure(this.peer, `sent ${reply.type} where ${expect} was expected`)
    }
    return reply
  }

  /** Runs hidden states `[tokens, hidden]` for the next positions through this hop. */
  async forward (hidden: Float32Array, tokens: number): Promise<Float32Array> {
    const signal = AbortSignal.timeout(this.init.stepTimeoutMs ?? 30_000)
    const t0 = performance.now()
    const step = this.step++
    const reply = await this.request({
      type: 'step', sessionId: this.sessionId, step, position: this.length, tokens, hidden: this.init.hiddenSize, dtype: this.init.dtype ?? 'f32', data: hidden
    }, 'result', signal)
    const r = reply as StepMessage
    if (r.step !== step || r.position !== this.length || r.tokens !== tokens) {
      this.stream.abort(new Error('protocol violation'))
      throw new PeerFailure(this.peer, `answered step ${r.step} at position ${r.position} for step ${step} at ${this.length}`)
    }
    await this.checkCommitment(r, step, hidden, tokens)
    this.length += tokens
    this.lastComputeMs = r.computeMs ?? 0
    this.lastWallMs = performance.now() - t0
    return r.data
  }

  /** Keeps the server's signed commitment to this step, or fails the step if it is missing or false. */
  private async checkCommitment (r: StepMessage, step: number, hidden: Float32Array, tokens: number): Promise<void> {
    if (this.init.requireCommitments === false) return
    const fail = (why: string): never => {
      this.stream.abort(new Error(why))
      throw new PeerFailure(this.peer, why)
    }
    if (r.commitment == null) fail('sent a result without a step commitment')
    const dtype = this.init.dtype ?? 'f32'
    const sent = dtype === 'f32' ? hidden : decodeTensor(encodeTensor(hidden, dtype), dtype)
    try {
      this.lastStep = { commitment: r.commitment!, input: sent, output: r.data }
      this.commitments.push(verifyCommitment(r.commitment!, {
        expectedPeer: this.peer,
        expected: {
          modelId: this.init.modelId,
          start: this.start,
          end: this.end,
          sessionId: this.sessionId,
          step,
          position: this.length,
          tokens,
          inputDigest: await tensorDigest(sent),
          outputDigest: await tensorDigest(r.data)
        }
      }))
    } catch (err: any) {
      fail(`bad step commitment: ${err.message}`)
    }
  }

  async truncate (length: number): Promise<void> {
    const r = await this.request({ type: 'truncate', sessionId: this.sessionId, length }, 'truncated', AbortSignal.timeout(10_000))
    this.length = (r as any).length
  }

  /** Frees the server's cache; never throws (the server also frees it when the stream ends). */
  async close (): Promise<void> {
    try {
      await this.io.write(encodeMessage({ type: 'close', sessionId: this.sessionId }), { signal: AbortSignal.timeout(2000) })
      await this.stream.close({ signal: AbortSignal.timeout(2000) })
    } catch {
      this.stream.abort(new Error('session closed'))
    }
  }
}
