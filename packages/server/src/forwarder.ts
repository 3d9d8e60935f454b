import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { ProtocolError, decodeMessage, encodeMessage } from '@plexus/protocol'
import { PROTOCOLS, SESSION_PROTOCOL, Channel } from '@plexus/p2p'
import type { NextHop, StepMessage } from '@plexus/protocol'

/** What a server needs to reach the next hop of a forwarded route (the libp2p node). */
export interface ForwardDialer {
  dialProtocol (peer: any, protocol: string, opts: { signal: AbortSignal }): Promise<Stream>
  getConnections (peer?: any): unknown[]
}

/**
 * The stream a server of a forwarded route pushes its outputs on: one per session, to the one
 * peer and session the client named in its `open`. Pushes are not acknowledged (the client hears
 * from every hop itself); an error frame or the end of the stream marks it dead, and the next
 * push fails with `next-hop`.
 */
export class Forwarder {
  readonly next: NextHop
  private readonly channel: Channel
  private dead?: string

  private constructor (next: NextHop, stream: Stream, maxFrameBytes: number) {
    this.next = next
    // pushes are not answered: a next hop that stops reading is dropped after the server's write deadline
    this.channel = new Channel(stream, { ...PROTOCOLS.session.client, maxFrameBytes, writeMs: PROTOCOLS.session.server.writeMs })
  }

  /** Dials the next hop and attaches to the client's session there (refused unless the client named us as its `prev`). */
  static async open (dialer: ForwardDialer, next: NextHop, opts: { signal: AbortSignal, maxFrameBytes: number }): Promise<Forwarder> {
    const fail = (why: string): never => { throw new ProtocolError('next-hop', `next hop ${next.peer}: ${why}`) }
    let stream: Stream
    try {
      stream = await dialer.dialProtocol(dialTarget(dialer, next), SESSION_PROTOCOL, { signal: opts.signal })
    } catch (err: any) {
      return fail(`cannot open a stream: ${err.message}`)
    }
    const f = new Forwarder(next, stream, opts.maxFrameBytes)
    try {
      const reply = decodeMessage(await f.channel.request(encodeMessage({ type: 'attach', sessionId: next.sessionId }), opts.signal))
      if (reply.type === 'error') fail(`refused the attach: ${reply.code}: ${reply.message}`)
      if (reply.type !== 'attached' || reply.sessionId !== next.sessionId) fail(`answered ${reply.type} to an attach`)
    } catch (err: any) {
      stream.abort(err)
      if (err instanceof ProtocolError && err.code === 'next-hop') throw err
      fail(err.message)
    }
    void f.watch()
    return f
  }

  /** Reads what the next hop says on this stream (only an error before it closes it). */
  private async watch (): Promise<void> {
    try {
      const frame = await this.channel.read()
      if (frame == null) throw new Error('the next hop closed it')
      const msg = decodeMessage(frame)
      this.dead = msg.type === 'error' ? `${msg.code}: ${msg.message}` : `sent ${msg.type} on a forward stream`
    } catch (err: any) {
      this.dead ??= `stream ended: ${err.message}`
    }
    if (this.dead !== 'closed') this.channel.abort(new Error(this.dead))
  }

  /** Pushes a step (the span's output) to the next hop's session: one frame, one write. */
  async push (step: Omit<StepMessage, 'type' | 'sessionId' | 'computeMs' | 'commitment'>): Promise<void> {
    if (this.dead != null) throw new ProtocolError('next-hop', `next hop ${this.next.peer}: ${this.dead}`)
    try {
      await this.channel.write(encodeMessage({ ...step, type: 'step', sessionId: this.next.sessionId }))
    } catch (err: any) {
      this.dead = err.message
      throw new ProtocolError('next-hop', `next hop ${this.next.peer}: cannot push a step: ${err.message}`)
    }
  }

  async close (): Promise<void> {
    this.dead ??= 'closed'
    await this.channel.close()
  }
}

/** Its open connection when there is one, else the client-given addresses (all of the named peer), else the peer id. */
function dialTarget (dialer: ForwardDialer, next: NextHop): unknown {
  const peer = peerIdFromString(next.peer)
  if (dialer.getConnections(peer).length > 0 || next.addrs == null || next.addrs.length === 0) return peer
  const addrs = []
  for (const a of next.addrs) {
    try {
      const ma = multiaddr(a)
      const named = ma.getComponents().find(c => c.name === 'p2p')?.value
      // a dial checks the remote's key: an address of another peer could only fail
      if (named != null && named !== next.peer) continue
      addrs.push(named != null ? ma : ma.encapsulate(`/p2p/${next.peer}`))
    } catch {}
  }
  return addrs.length > 0 ? addrs : peer
}
