import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { verifyAnnouncement } from './announcement.ts'
import { PROTOCOL_PREFIX } from './node.ts'
import type { AnnouncementPayload } from './announcement.ts'
import type { PlexusNode } from './node.ts'
import type { Connection, PeerId, Stream } from '@libp2p/interface'

/**
 * `/plexus/info/1.0.0`: "what do you serve right now?". One request/response per stream, each
 * a varint-length-prefixed UTF-8 JSON message:
 *
 *   request:  {}                                   (fields reserved for filters; ignored today)
 *   response: { "records": ["<signed record>", ...] }  or  { "error": "<why>" }
 *
 * Each record is the exact JSON text of a signed announcement (records.ts), so the client
 * verifies what the server signed, byte for byte.
 */
export const INFO_PROTOCOL = `${PROTOCOL_PREFIX}/info/1.0.0`
export const MAX_INFO_REQUEST_BYTES = 4 * 1024
export const MAX_INFO_RESPONSE_BYTES = 1024 * 1024
export const MAX_INFO_RECORDS = 256
export const DEFAULT_INFO_TIMEOUT_MS = 5000

/** Current signed announcement records of one thing this node serves. */
export type InfoSource = () => Promise<Uint8Array[]>

export interface ServeInfoOptions {
  /** Deadline for one request, reading to replying. Default 5 s. */
  timeoutMs?: number
}

const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { fatal: true })

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
    const log = node.logger.forComponent('plexus:info')
    try {
      await node.handle(INFO_PROTOCOL, async (stream: Stream, connection: Connection) => {
        try {
          await answer(stream, all, AbortSignal.timeout(timeoutMs))
        } catch (err) {
          log.error('info request from %p failed: %e', connection.remotePeer, err)
          stream.abort(err as Error)
        }
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

async function answer (stream: Stream, all: Set<InfoSource>, signal: AbortSignal): Promise<void> {
  const io = lpStream(stream, { maxDataLength: MAX_INFO_REQUEST_BYTES })
  const request = parseJson((await io.read({ signal })).subarray())
  if (request == null || typeof request !== 'object' || Array.isArray(request)) throw new Error('info request is not a JSON object')

  let response: object
  try {
    const lists = await Promise.all([...all].map(async s => await untilAborted(s(), signal)))
    const records = lists.flat()
    if (records.length > MAX_INFO_RECORDS) throw new Error(`${records.length} records, over the limit of ${MAX_INFO_RECORDS}`)
    response = { records: records.map(r => dec.decode(r)) }
  } catch (err) {
    signal.throwIfAborted()
    response = { error: `cannot list records: ${(err as Error).message}` }
  }
  let bytes = enc.encode(JSON.stringify(response))
  if (bytes.byteLength > MAX_INFO_RESPONSE_BYTES) bytes = enc.encode(JSON.stringify({ error: `records take ${bytes.byteLength} bytes, over the ${MAX_INFO_RESPONSE_BYTES}-byte limit` }))
  await io.write(bytes, { signal })
  await stream.close({ signal })
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

  let bytes: Uint8Array
  let stream: Stream | undefined
  try {
    stream = await node.dialProtocol(peerId, INFO_PROTOCOL, { signal, runOnLimitedConnection: true })
    const io = lpStream(stream, { maxDataLength: MAX_INFO_RESPONSE_BYTES })
    await io.write(enc.encode('{}'), { signal })
    bytes = (await io.read({ signal })).subarray()
  } catch (err) {
    stream?.abort(err as Error)
    const e = err as Error
    if (opts.signal?.aborted === true) throw fail('aborted', err)
    if (deadline.aborted) throw fail('no answer in time', err)
    if (stream == null) throw fail(`cannot connect: ${e.name === 'Error' ? e.message : `${e.name}: ${e.message}`}`, err)
    throw fail(`exchange failed: ${e.name}: ${e.message}`, err)
  }
  const s = stream
  await s.close({ signal }).catch(err => { s.abort(err as Error) })

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
