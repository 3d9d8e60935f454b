import type { Logger, Stream } from '@libp2p/interface'
import { Channel, ChannelError, errorReply } from './channel.ts'
import type { ChannelInit, ErrorReply } from './channel.ts'
import type { ByteBudget } from './byte-budget.ts'

/** How one protocol reads its messages and answers a refusal. */
export interface ChannelCodec<M, C extends string> {
  decode: (frame: Uint8Array) => M
  /** The protocol's error frame for a refusal (the one error reply shape, in its encoding). */
  encodeError: (reply: ErrorReply<C | 'bad-request' | 'internal' | 'busy'>) => Uint8Array
  /** Refusals of the protocol's own kind, whose code and message go out as they are. */
  isOwn: (err: unknown) => err is Error & { code: C }
  /** The protocol's code for a framing violation or an idle stream. */
  channelCode: (err: ChannelError) => C | 'bad-request'
}

export type ServeLimits = Omit<ChannelInit, 'maxFrameBytes'> & { maxFrameBytes: number | (() => number) }

export interface ServeInit<M, C extends string> {
  /** Names the protocol in logs. */
  name: string
  codec: ChannelCodec<M, C>
  limits: ServeLimits
  /** The node's buffered-bytes budget (node.services.plexus.budget): every frame read is charged to it. */
  budget?: ByteBudget
  log: Logger
  /** Runs before the first read; throwing refuses the stream (e.g. busy). */
  admit?: () => void
  /** Answers one message: one handler per message type (like kad-dht's rpc/handlers). */
  dispatch: (msg: M, channel: Channel) => Promise<void>
  /** One request, one answer per stream (info): the stream closes after the first message. */
  once?: boolean
  /** After a refusal was answered (metrics; a forwarded route tells its other streams). */
  onRefused?: (reply: ErrorReply<C | 'bad-request' | 'internal' | 'busy'>) => void | Promise<void>
  /** Frees what the stream held, however it ended. */
  cleanup?: () => void | Promise<void>
}

/**
 * The one server loop of every protocol: reads frames until the peer ends its side (or, with
 * `once`, one frame), hands each message to `dispatch`, and answers any refusal with one error
 * frame, after which the stream closes. A peer that resets or vanishes gets no answer; its stream is freed all the same.
 */
export async function serveChannel<M, C extends string> (stream: Stream, peer: string, init: ServeInit<M, C>): Promise<void> {
  const { codec, log, name } = init
  const channel = new Channel(stream, init.budget == null ? init.limits : { ...init.limits, budget: { of: init.budget, peer } })
  try {
    init.admit?.()
    while (true) {
      let frame: Uint8Array | null
      try {
        frame = await channel.read()
      } catch (err: any) {
        // a framing violation or a refusal from a frame's header gets its answer; a reset does not
        if (err instanceof ChannelError || codec.isOwn(err)) throw err
        log('%s stream from %s ended: %s', name, peer, err.message)
        return
      }
      if (frame == null) {
        log('%s stream from %s ended', name, peer)
        return
      }
      await init.dispatch(codec.decode(frame), channel)
      if (init.once === true) return
    }
  } catch (err: any) {
    const reply = errorReply(err, codec.isOwn, codec.channelCode)
    log('%s stream from %s: %s: %s', name, peer, reply.code, reply.message)
    try { await channel.write(codec.encodeError(reply)) } catch {}
    await init.onRefused?.(reply)
  } finally {
    try { await init.cleanup?.() } finally { await channel.close() }
  }
}

/** What a client dials with (a libp2p node, or a wrapper of one). */
export interface ChannelDialer {
  dialProtocol: (peer: any, protocol: string, opts: { signal: AbortSignal }) => Promise<Stream>
}

/** Opens a stream of `protocol` to `target` and frames it. */
export async function openChannel (dialer: ChannelDialer, target: unknown, protocol: string, limits: ServeLimits, signal: AbortSignal): Promise<Channel> {
  const stream = await dialer.dialProtocol(target, protocol, { signal })
  return new Channel(stream, limits)
}

/** One request and its answer on a fresh stream, which is closed afterwards. */
export async function request (dialer: ChannelDialer, target: unknown, protocol: string, payload: Uint8Array, limits: ServeLimits, signal: AbortSignal): Promise<Uint8Array> {
  const channel = await openChannel(dialer, target, protocol, limits, signal)
  try {
    const answer = await channel.request(payload, signal)
    await channel.close()
    return answer
  } catch (err) {
    channel.abort(err as Error)
    throw err
  }
}
