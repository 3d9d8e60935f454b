import { randomBytes } from 'node:crypto'
import type { Stream } from '@libp2p/interface'
import { sessionFrameLimit, encodeMessage, decodeMessage, encodeTensor, decodeTensor, tensorDigest, verifyCommitment } from '@plexus/protocol'
import { PROTOCOLS, SESSION_PROTOCOL, Channel } from '@plexus/p2p'
import type { SessionMessage, StepMessage, WireDType, ErrorCode, StepCommitment, NextHop } from '@plexus/protocol'
import { PlexusError } from '@plexus/runtime'

/** The server answered with an error frame (`busy`, `not-served`, ...). */
export class RemoteError extends PlexusError {
  /** The wire's error code, as the server sent it. */
  declare readonly code: ErrorCode
  readonly peer: string
  constructor (peer: string, code: ErrorCode, message: string) {
    super(code, `${peer.slice(-8)}: ${message}`, { httpStatus: 503 })
    this.name = 'RemoteError'
    this.peer = peer
  }
}

/** The server could not be reached, died, hung, or broke the protocol. */
export class PeerFailure extends PlexusError {
  readonly peer: string
  constructor (peer: string, message: string, opts?: { cause?: unknown }) {
    super('peer-failure', `${peer.slice(-8)}: ${message}`, { ...opts, httpStatus: 503 })
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
  /** Largest answer accepted; default: a result of `maxLength` tokens of `hiddenSize` values. */
  maxFrameBytes?: number
  /** Refuse results without a valid signed step commitment (default: required). */
  requireCommitments?: boolean
  /** Chosen by the caller when other hops must name this session (a forwarded route). */
  sessionId?: string
  /** Forwarded route: the server pushes its outputs to this session of the next hop. */
  next?: NextHop
  /** Forwarded route: the peer whose pushes feed this session (none: the client sends its steps). */
  prev?: string
  /** Forwarded route: the server sends its outputs here too (spot checks need them). */
  returnOutputs?: boolean
}

/** One hop's answer to a step of a forwarded route, checked. */
export interface RoutedReply {
  /** BLAKE3 of its output as committed (the next hop's input must match it). */
  outputDigest: string
  /** The output itself when the server sent it (the last hop, or `returnOutputs`). */
  output?: Float32Array
}

/** One session on one server: blocks `[start, end)`, one step in flight at a time. */
export class RemoteSpanSession {
  readonly peer: string
  readonly start: number
  readonly end: number
  readonly sessionId: string
  private readonly stream: Stream
  private readonly channel: Channel
  private readonly init: RemoteSpanInit
  private step = 0
  length = 0
  /** Positions were dropped here (`rewindTo`) and the server hears of it with the next step. */
  private rewinding = false
  /** Server-reported compute time of the last step, ms. */
  lastComputeMs = 0
  /** Wall time of the last step as the client saw it, ms (minus compute: the hop's overhead). */
  lastWallMs = 0
  /** Steps whose output this server pushed to the next hop (a forwarded route). */
  forwardedSteps = 0
  /** Steps whose signed commitment the server sent and this client verified. */
  committedSteps = 0
  /** The last of them (only the last is kept: the auditor records what checks need from `lastStep`). */
  lastCommitment?: StepCommitment
  /** The last step as the server committed to it: its signed text, input (as the server decoded it) and output. */
  lastStep?: { commitment: string, input: Float32Array, output: Float32Array }

  private constructor (init: RemoteSpanInit, stream: Stream, sessionId: string) {
    this.init = init
    this.peer = init.peer
    this.start = init.start
    this.end = init.end
    this.stream = stream
    this.sessionId = sessionId
    const maxFrameBytes = init.maxFrameBytes ?? sessionFrameLimit({ hiddenSize: init.hiddenSize, maxStepTokens: init.maxLength })
    this.channel = new Channel(stream, { ...PROTOCOLS.session.client, maxFrameBytes })
  }

  static async open (dialer: Dialer, init: RemoteSpanInit): Promise<RemoteSpanSession> {
    let stream: Stream
    const signal = AbortSignal.timeout(init.openTimeoutMs ?? 10_000)
    try {
      stream = await dialer.dialProtocol(init.target, SESSION_PROTOCOL, { signal })
    } catch (err: any) {
      throw new PeerFailure(init.peer, `cannot open a session stream: ${err.message}`, { cause: err })
    }
    const s = new RemoteSpanSession(init, stream, init.sessionId ?? randomBytes(16).toString('hex'))
    const route = { ...(init.next != null ? { next: init.next } : {}), ...(init.prev != null ? { prev: init.prev } : {}), ...(init.returnOutputs === true ? { returnOutputs: true } : {}) }
    await s.request({ type: 'open', sessionId: s.sessionId, modelId: init.modelId, start: init.start, end: init.end, maxLength: init.maxLength, ...route }, 'opened', signal)
    return s
  }

  private async request (msg: SessionMessage, expect: SessionMessage['type'], signal: AbortSignal): Promise<SessionMessage> {
    await this.write(msg, signal)
    return await this.reply(expect, signal)
  }

  private async write (msg: SessionMessage, signal: AbortSignal): Promise<void> {
    try {
      await this.channel.write(encodeMessage(msg), signal)
    } catch (err: any) {
      this.stream.abort(err)
      throw new PeerFailure(this.peer, err.message, { cause: err })
    }
  }

  private async reply (expect: SessionMessage['type'] | Array<SessionMessage['type']>, signal: AbortSignal): Promise<SessionMessage> {
    let reply: SessionMessage
    try {
      const frame = await this.channel.read(signal)
      if (frame == null) throw new Error('closed the stream without answering')
      reply = decodeMessage(frame, { hiddenSize: this.init.hiddenSize })
    } catch (err: any) {
      this.stream.abort(err)
      const why = err.name === 'TimeoutError' || err.name === 'AbortError' ? 'no answer in time (hung?)' : err.message
      throw new PeerFailure(this.peer, why, { cause: err })
    }
    if (reply.type === 'error') {
      this.stream.abort(new Error(reply.message))
      throw new RemoteError(this.peer, reply.code, reply.message)
    }
    if (Array.isArray(expect) ? !expect.includes(reply.type) : reply.type !== expect) {
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
      type: 'step', sessionId: this.sessionId, step, position: this.length, tokens, hidden: this.init.hiddenSize, dtype: this.init.dtype ?? 'f32', data: hidden, ...this.takeRewind()
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

  /** Forwarded route, first hop: sends a step; the answers come from every hop (`receive`). */
  async send (hidden: Float32Array, tokens: number, signal: AbortSignal): Promise<void> {
    await this.write({ type: 'step', sessionId: this.sessionId, step: this.step, position: this.length, tokens, hidden: this.init.hiddenSize, dtype: this.init.dtype ?? 'f32', data: hidden, ...this.takeRewind() }, signal)
  }

  /**
   * Drops positions from `length` on without a round trip: the next step carries `rewind` and
   * the server truncates before computing it (on a forwarded route the first hop's step carries
   * it down the route; the later hops' sessions here only move back their expected position).
   */
  rewindTo (length: number, tell = true): void {
    if (!Number.isInteger(length) || length < 0 || length > this.length) throw new RangeError(`cannot rewind the session on ${this.peer} to ${length}: it holds ${this.length} positions`)
    if (length === this.length) return
    this.length = length
    if (tell) this.rewinding = true
  }

  private takeRewind (): { rewind?: true } {
    if (!this.rewinding) return {}
    this.rewinding = false
    return { rewind: true }
  }

  /** Forwarded route: this hop's answer to the step in flight (its commitment, its output when sent). */
  async receive (tokens: number, signal: AbortSignal): Promise<StepMessage | (SessionMessage & { type: 'forwarded' })> {
    const t0 = performance.now()
    const r = await this.reply(this.init.next == null || this.init.returnOutputs === true ? 'result' : 'forwarded', signal) as StepMessage | (SessionMessage & { type: 'forwarded' })
    if (r.step !== this.step || r.position !== this.length || r.tokens !== tokens) {
      this.stream.abort(new Error('protocol violation'))
      throw new PeerFailure(this.peer, `answered step ${r.step} at position ${r.position} for step ${this.step} at ${this.length}`)
    }
    if (r.type === 'forwarded') this.forwardedSteps++
    this.lastComputeMs = r.computeMs ?? 0
    this.lastWallMs = performance.now() - t0
    return r
  }

  /**
   * Forwarded route: checks a hop's answer against the chain of commitments — its input must be
   * what the previous hop committed to as its output (or what this client sent, at the first hop).
   */
  async accept (r: StepMessage | (SessionMessage & { type: 'forwarded' }), tokens: number, input: { digest: string, data?: Float32Array }): Promise<RoutedReply> {
    const output = r.type === 'result' ? r.data : undefined
    const step = this.step
    const fail = (why: string): never => {
      this.stream.abort(new Error(why))
      throw new PeerFailure(this.peer, why)
    }
    if (r.commitment == null) {
      if (this.init.requireCommitments !== false) fail('sent a result without a step commitment')
      this.step++
      this.length += tokens
      return { outputDigest: output != null ? await tensorDigest(output) : '', output }
    }
    let c: StepCommitment | undefined
    try {
      c = verifyCommitment(r.commitment, {
        expectedPeer: this.peer,
        expected: {
          modelId: this.init.modelId, start: this.start, end: this.end, sessionId: this.sessionId, step, position: this.length, tokens,
          inputDigest: input.digest,
          ...(output != null ? { outputDigest: await tensorDigest(output) } : {})
        }
      })
    } catch (err: any) {
      fail(`bad step commitment: ${err.message}`)
    }
    this.lastCommitment = c!
    this.committedSteps++
    if (output != null && input.data != null) this.lastStep = { commitment: r.commitment, input: input.data, output }
    this.step++
    this.length += tokens
    return { outputDigest: c!.outputDigest, output }
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
      this.lastCommitment = verifyCommitment(r.commitment!, {
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
      })
      this.committedSteps++
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
      await this.channel.write(encodeMessage({ type: 'close', sessionId: this.sessionId }), AbortSignal.timeout(2000))
      await this.channel.close()
    } catch {
      this.channel.abort(new Error('session closed'))
    }
  }
}
