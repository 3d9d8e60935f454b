import type { PrivateKey } from '@libp2p/interface'
import { ProtocolError, decodeTensor, encodeTensor, signCommitment, tensorDigest } from '@plexus/protocol'
import type { SessionMessage, StepMessage, ErrorCode } from '@plexus/protocol'
import type { BlockBackend } from './backend.ts'
import type { Forwarder } from './forwarder.ts'

/**
 * A session of a forwarded route: the client opened it on its own stream naming the previous
 * hop (who feeds it) and/or the next hop (where its outputs go). Every reply for it goes to the
 * client's stream, whichever stream brought the step.
 */
export interface RoutedSession {
  backend: BlockBackend
  /** The peer allowed to feed steps (over one stream it attaches); none: the client itself. */
  prev?: string
  /** Where outputs are pushed; none: the last hop, whose outputs go to the client. */
  next?: Forwarder
  /** Send the client every output, not only the commitment (spot checks). */
  returnOutputs: boolean
  attached: boolean
  /** Replies on the client's stream; keeps it from idling out while steps come from elsewhere. */
  toClient: (m: SessionMessage) => Promise<void>
  touch: () => void
  /** Tells the client why the session broke, and ends its stream. */
  fail: (code: ErrorCode, message: string) => Promise<void>
}

/** The node's forwarded sessions by id (one table per session handler, shared by its streams). */
export class RouteTable {
  private readonly sessions = new Map<string, RoutedSession>()
  get (id: string): RoutedSession | undefined { return this.sessions.get(id) }
  has (id: string): boolean { return this.sessions.has(id) }
  add (id: string, s: RoutedSession): void { this.sessions.set(id, s) }
  async remove (id: string): Promise<void> {
    const s = this.sessions.get(id)
    this.sessions.delete(id)
    await s?.next?.close()
  }

  /** `peer` attaches a stream to feed `id`: only the previous hop the client named, once. */
  attach (id: string, peer: string): RoutedSession {
    const s = this.sessions.get(id)
    if (s == null) throw new ProtocolError('unknown-session', `no forwarded session ${id} here`)
    if (s.prev !== peer) throw new ProtocolError('bad-request', `session ${id} is not fed by ${peer}: its client named another previous hop`)
    if (s.attached) throw new ProtocolError('bad-request', `session ${id} already has its feeding stream`)
    s.attached = true
    return s
  }
}

export interface StepReplyContext {
  privateKey?: PrivateKey
  /** Replies for sessions that are not forwarded: this stream. */
  send: (m: SessionMessage) => Promise<void>
}

/**
 * Answers a computed step. Relayed: the result on this stream. Forwarded: the output is pushed
 * to the next hop first (the critical path), then the commitment — and the output when asked, or
 * at the last hop — goes to the client.
 */
export async function replyStep (ctx: StepReplyContext, backend: BlockBackend, routed: RoutedSession | undefined, msg: StepMessage, out: Float32Array, computeMs: number): Promise<void> {
  const { sessionId, step, position, tokens, hidden, dtype } = msg
  // a rewind rides down the route with the step: every later hop drops the same positions
  const pushed = routed?.next?.push({ step, position, tokens, hidden, dtype, data: out, ...(msg.rewind === true ? { rewind: true } : {}) })
  // the pushed promise is awaited below; a failure there must not go unhandled meanwhile
  pushed?.catch(() => {})
  const commitment = ctx.privateKey == null
    ? undefined
    : await signCommitment(ctx.privateKey, {
      modelId: backend.modelId,
      ...spanOf(backend.sessionSpan(sessionId)),
      sessionId,
      step,
      position,
      tokens,
      inputDigest: await tensorDigest(msg.data),
      // what the client (or the next hop) will decode: the output through the wire dtype
      outputDigest: await tensorDigest(dtype === 'f32' ? out : decodeTensor(encodeTensor(out, dtype), dtype))
    })
  if (pushed != null) await pushed
  const result: StepMessage = { type: 'result', sessionId, step, position, tokens, hidden, dtype, computeMs, data: out, commitment }
  if (routed == null) return await ctx.send(result)
  routed.touch()
  if (routed.next == null || routed.returnOutputs) return await routed.toClient(result)
  await routed.toClient({ type: 'forwarded', sessionId, step, position, tokens, computeMs, commitment })
}

function spanOf ([start, end]: [number, number]): { start: number, end: number } { return { start, end } }

/** A step may come from the stream that attached to its session or, for sessions without a `prev`, from its client. */
export function feedCheck (routed: RoutedSession | undefined, fedHere: boolean, id: string): void {
  if (fedHere) return
  if (routed?.prev != null) throw new ProtocolError('bad-request', `session ${id} is fed by its previous hop ${routed.prev}, not by its client`)
}
