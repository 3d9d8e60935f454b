import { peerIdFromString } from '@libp2p/peer-id'
import { PlexusError } from '@plexus/runtime'
import { verifyAnnouncement } from './announcement.ts'
import { jsonErrorFrame } from './channel.ts'
import { request, serveChannel } from './channel-serve.ts'
import { DEFAULT_INFO_TIMEOUT_MS, INFO_PROTOCOL, MAX_INFO_RESPONSE_BYTES, PROTOCOLS } from './protocols.ts'
import type { AnnouncementPayload } from './announcement.ts'
import type { ChannelCodec, ChannelDialer } from './channel-serve.ts'
import type { PlexusNode } from './node.ts'
import type { Connection, PeerId, Stream } from '@libp2p/interface'

/**
 * `/plexus/info/1.0.0`: "what do you serve right now?". One request and one answer per stream,
 * each one frame of the framed channel (channel.ts: varint length, then UTF-8 JSON):
 *
 *   request:  {}                                   (fields reserved for filters; ignored today)
 *   response: { "records": ["<signed record>", ...] }  or  { "error": "<why>", "code": "<code>" }
 *
 * Each record is the exact JSON text of a signed announcement (records.ts), so the client
 * verifies what the server signed, byte for byte. Limits: PROTOCOLS.info.
 */
export const MAX_INFO_RECORDS = 256

/** Current signed announcement records of one thing this node serves. */
export type InfoSource = () => Promise<Uint8Array[]>

export interface ServeInfoOptions {
  /** Deadline for each part of one request: reading it, listing records, writing the answer. Default 5 s. */
  timeoutMs?: number
}

type InfoErrorCode = 'bad-request' | 'internal'

/** A refusal of the info protocol, answered with its code in the JSON error frame. */
export class InfoError extends PlexusError {
  declare readonly code: InfoErrorCode
  constructor (code: InfoErrorCode, message: string) {
    super(code, message, { httpStatus: code === 'bad-request' ? 400 : 502 })
    this.name = 'InfoError'
  }
}

const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { fatal: true })

const infoCodec: ChannelCodec<object, InfoErrorCode> = {
  decode: (frame) => {
    const msg = parseJson(frame)
    if (msg == null || typeof msg !== 'object' || Array.isArray(msg)) throw new InfoError('bad-request', 'info request is not a JSON object')
    return msg
  },
  encodeError: jsonErrorFrame,
  isOwn: (err): err is InfoError => err instanceof InfoError,
  channelCode: () => 'bad-request'
}

/**
 * Answers info requests with the records `source` returns. Returns a function that removes
 * this source (and the protocol handler once no source is left).
 */
export async function serveInfo (node: PlexusNode, source: InfoSource, opts: ServeInfoOptions = {}): Promise<() => Promise<void>> {
  // one handler answers with the records of every source the node holds (services.ts)
  const services = node.services.plexus
  let set = services.infoSources
  if (set == null) {
    set = new Set()
    services.infoSources = set
    const all = set
    const timeoutMs = opts.timeoutMs ?? DEFAULT_INFO_TIMEOUT_MS
    const limits = { ...PROTOCOLS.info.server, idleMs: timeoutMs, writeMs: timeoutMs }
    const log = node.logger.forComponent('plexus:info')
    try {
      await node.handle(INFO_PROTOCOL, async (stream: Stream, connection: Connection) => {
        await serveChannel(stream, connection.remotePeer.toString(), {
          name: 'info',
          codec: infoCodec,
          limits,
          budget: services.budget,
          log,
          once: true,
          dispatch: async (_request, channel) => { await channel.write(await answer(all, AbortSignal.timeout(timeoutMs))) }
        })
      }, { runOnLimitedConnection: true, maxInboundStreams: 64 })
    } catch (err) {
      services.infoSources = undefined
      throw new Error(`cannot serve ${INFO_PROTOCOL}: ${(err as Error).message}`, { cause: err })
    }
  }
  set.add(source)
  const mine = set
  return async () => {
    mine.delete(source)
    if (mine.size === 0 && services.infoSources === mine) {
      services.infoSources = undefined
      await node.unhandle(INFO_PROTOCOL)
    }
  }
}

/** The records of every source, as one answer frame; a source that fails or hangs is an `internal` refusal. */
async function answer (sources: Set<InfoSource>, signal: AbortSignal): Promise<Uint8Array> {
  let records: string[]
  try {
    const signed = (await Promise.all([...sources].map(async s => await untilAborted(s(), signal)))).flat()
    if (signed.length > MAX_INFO_RECORDS) throw new Error(`${signed.length} records, over the limit of ${MAX_INFO_RECORDS}`)
    records = signed.map(r => dec.decode(r))
  } catch (err) {
    throw new InfoError('internal', `cannot list records: ${(err as Error).message}`)
  }
  const bytes = enc.encode(JSON.stringify({ records }))
  if (bytes.byteLength > MAX_INFO_RESPONSE_BYTES) throw new InfoError('internal', `records take ${bytes.byteLength} bytes, over the ${MAX_INFO_RESPONSE_BYTES}-byte limit`)
  return bytes
}

export interface FetchInfoOptions {
  signal?: AbortSignal
  /** Deadline of the whole exchange, dial included (also when a signal is given). Default 5 s. */
  timeoutMs?: number
  /** Clock override for record checks (ms). */
  now?: number
}

/**
 * Asks `peer` what it serves and verifies every record: each must be a valid announcement
 * signed by `peer` itself. Any bad record fails the whole answer (a peer handing out forged or
 * foreign records should not be routed through). Errors name the peer and the reason.
 */
export async function fetchInfo (node: PlexusNode, peer: PeerId | string, opts: FetchInfoOptions = {}): Promise<AnnouncementPayload[]> {
  const peerId = typeof peer === 'string' ? peerIdFromString(peer) : peer
  const deadline = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_INFO_TIMEOUT_MS)
  const signal = opts.signal != null ? AbortSignal.any([opts.signal, deadline]) : deadline
  const fail = (why: string, cause?: unknown): Error => new Error(`info from peer ${peerId.toString()}: ${why}`, { cause })

  // info may cross a relay (a limited connection); the flag tells a failed dial from a failed exchange
  let dialed = false
  const dialer: ChannelDialer = {
    dialProtocol: async (target, protocol, o) => {
      const stream = await node.dialProtocol(target, protocol, { ...o, runOnLimitedConnection: true })
      dialed = true
      return stream
    }
  }
  let bytes: Uint8Array
  try {
    bytes = await request(dialer, peerId, INFO_PROTOCOL, enc.encode('{}'), PROTOCOLS.info.client, signal)
  } catch (err) {
    const e = err as Error
    if (opts.signal?.aborted === true) throw fail('aborted', err)
    if (deadline.aborted) throw fail('no answer in time', err)
    if (!dialed) throw fail(`cannot connect: ${e.name === 'Error' ? e.message : `${e.name}: ${e.message}`}`, err)
    throw fail(`exchange failed: ${e.name}: ${e.message}`, err)
  }

  const response = parseJson(bytes) as { records?: unknown, error?: unknown } | undefined
  if (response == null || typeof response !== 'object') throw fail('answer is not JSON')
  if (typeof response.error === 'string') throw fail(`peer reports an error: ${response.error.slice(0, 300)}`)
  if (!Array.isArray(response.records) || response.records.length > MAX_INFO_RECORDS) throw fail('answer has no valid "records" list')
  const records = response.records
  return records.map((r, i) => {
    if (typeof r !== 'string') throw fail(`record ${i + 1} of ${records.length} is not a string`)
    try {
      return verifyAnnouncement(enc.encode(r), { expectedPeer: peerId, ...(opts.now != null ? { now: opts.now } : {}) })
    } catch (err) {
      throw fail(`record ${i + 1} of ${records.length} rejected: ${(err as Error).message}`, err)
    }
  })
}

function parseJson (bytes: Uint8Array): unknown {
  try {
    return JSON.parse(dec.decode(bytes))
  } catch {
    return undefined
  }
}

async function untilAborted<T> (p: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted()
  let onAbort!: () => void
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([p, aborted])
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}
