import { PROTOCOL_PREFIX } from './node.ts'

// Every Plexus stream protocol, its id and its framing limits, in one table. Each frame on every
// one of them is [varint length][payload] (channel.ts); the limits bound what a peer may make
// the other buffer, and the deadlines how long a quiet or slow peer may hold a stream. It lives
// here, below @plexus/protocol, so that the info protocol (info.ts) runs on the same channel.

export const SESSION_PROTOCOL = `${PROTOCOL_PREFIX}/session/1.0.0`
export const VERIFY_PROTOCOL = `${PROTOCOL_PREFIX}/verify/1.0.0`
export const MODEL_FILES_PROTOCOL = `${PROTOCOL_PREFIX}/model/1.0.0`
/** "What do you serve right now?" (info.ts). */
export const INFO_PROTOCOL = `${PROTOCOL_PREFIX}/info/1.0.0`
export const MAX_INFO_REQUEST_BYTES = 4 * 1024
export const MAX_INFO_RESPONSE_BYTES = 1024 * 1024
export const DEFAULT_INFO_TIMEOUT_MS = 5000

/** Cap on an error reply's message, in characters: errors may quote a peer's input. */
export const MAX_ERROR_MESSAGE = 2000

/** What one protocol's channel accepts and how long it waits. */
export interface ChannelLimits {
  /** Largest frame accepted; a longer declared length is refused at its prefix. */
  maxFrameBytes: number
  /** A stream with no complete frame for this long is closed (none: reads wait on the caller's signal). */
  idleMs?: number
  /** A write that cannot drain for this long aborts the stream (none: the caller's signal rules). */
  writeMs?: number
}

export interface ProtocolSpec {
  id: string
  /** Limits of the serving side (what it reads) and of the asking side (what it reads back). */
  server: Required<ChannelLimits>
  /** Clients bound their waits with each request's own deadline. */
  client: ChannelLimits
}

export const PROTOCOLS = {
  /** Fixed defaults only: a session handler derives its frame limit from its model (sessionFrameLimit, @plexus/protocol). */
  session: {
    id: SESSION_PROTOCOL,
    server: { maxFrameBytes: 64 << 20, idleMs: 5 * 60_000, writeMs: 30_000 },
    client: { maxFrameBytes: 64 << 20 }
  },
  /** A check carries a hop's steps since the last one; a recheck a whole fraud report. */
  verify: {
    id: VERIFY_PROTOCOL,
    server: { maxFrameBytes: 96 << 20, idleMs: 5 * 60_000, writeMs: 30_000 },
    client: { maxFrameBytes: 96 << 20 }
  },
  /** Requests are small JSON; answers are chunks of at most 4 MiB. */
  model: {
    id: MODEL_FILES_PROTOCOL,
    server: { maxFrameBytes: 4096, idleMs: 30_000, writeMs: 60_000 },
    client: { maxFrameBytes: 4 << 20 }
  },
  /** One request, one answer per stream (info.ts). */
  info: {
    id: INFO_PROTOCOL,
    server: { maxFrameBytes: MAX_INFO_REQUEST_BYTES, idleMs: DEFAULT_INFO_TIMEOUT_MS, writeMs: DEFAULT_INFO_TIMEOUT_MS },
    client: { maxFrameBytes: MAX_INFO_RESPONSE_BYTES }
  }
} as const satisfies Record<string, ProtocolSpec>
