import type { Logger, PrivateKey } from '@libp2p/interface'
import { ProtocolError, encodeMessage } from '@plexus/protocol'
import type { ErrorCode, SessionMessage } from '@plexus/protocol'
import type { ByteBudget, Channel } from '@plexus/p2p'
import type { BackendSet, BlockBackend } from '../backend.ts'
import type { ForwardDialer } from '../forwarder.ts'
import type { RouteTable } from '../routed-sessions.ts'

export interface SessionHandlerComponents {
  /** The spans this node serves; each session is opened on the one serving its blocks. */
  backends: BackendSet
  log: Logger
  /** Signs a commitment to every step result (evidence for clients and verifiers). */
  privateKey?: PrivateKey
  /** Dials the next hop of forwarded routes (without it, an open naming a next hop is refused). */
  dialer?: ForwardDialer
  /** This node's peer id (a route may not forward a node to itself). */
  peerId?: string
  /** The node's buffered-bytes budget (node.services.plexus.budget): every frame read is charged to it. */
  budget?: ByteBudget
}

export interface SessionHandlerInit {
  /**
   * The model's width and the most tokens one step may carry: frames are sized by them. Without
   * them they come from the backends served (the largest of each, asked per frame).
   */
  hiddenSize?: number
  maxStepTokens?: number
  /** A fixed frame limit instead of the one derived from the model. */
  maxFrameBytes?: number
  /** A stream with no message for this long is closed (its sessions freed). */
  idleTimeoutMs?: number
  /** A reply the client does not read for this long aborts the stream. */
  writeTimeoutMs?: number
  /** Observers (metrics, tests). */
  onStep?: (info: { tokens: number, computeMs: number }) => void
  onError?: (code: ErrorCode, message: string) => void
}

/** What one session stream's message handlers share (one per stream). */
export interface SessionStream {
  readonly components: SessionHandlerComponents
  readonly init: SessionHandlerInit
  /** The node's forwarded sessions (one table per handler, shared by its streams). */
  readonly routes: RouteTable
  readonly channel: Channel
  /** The remote peer. */
  readonly peer: string
  /** Sessions this stream opened. */
  readonly owned: Map<string, BlockBackend>
  /** Forwarded sessions this stream feeds (it attached to them as their previous hop). */
  readonly fed: Set<string>
  /** The frame limit now (the next hop's stream is sized the same). */
  readonly frameLimit: () => number
  send: (m: SessionMessage) => Promise<void>
  /** Only the stream that opened a session may step, truncate or close it. */
  own: (id: string) => BlockBackend
}

export function sessionStream (fields: Omit<SessionStream, 'send' | 'own' | 'owned' | 'fed'>): SessionStream {
  const owned = new Map<string, BlockBackend>()
  return {
    ...fields,
    owned,
    fed: new Set(),
    send: async (m) => { await fields.channel.write(encodeMessage(m)) },
    own: (id) => {
      const b = owned.get(id)
      if (b != null) return b
      fields.components.backends.holder(id) // unknown/closed → its own error
      throw new ProtocolError('bad-request', `session ${id} belongs to another stream`)
    }
  }
}
