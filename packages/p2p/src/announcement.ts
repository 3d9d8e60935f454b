import { multiaddr } from '@multiformats/multiaddr'
import { RecordError, signRecord, verifyRecord } from './records.ts'
import type { RecordPayload, SignRecordOptions, VerifyRecordOptions } from './records.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

/** What a server says about one span it serves (schemas/announcement.schema.json). */
export interface AnnouncementBody {
  /** 64 hex digits (runtime's model id). */
  modelId: string
  modelName: string
  /** Served blocks are [start, end). */
  start: number
  end: number
  /** Blocks in the whole model. */
  numBlocks: number
  /** Measured tokens/s per block. */
  throughput: number
  /** What computes the blocks: webgpu, tensorflow, wasm or cpu (absent in older records). */
  backend?: string
  /** How the blocks' weights are held: f32, bf16, f16, q8_0, q4_k … (absent in older records). */
  format?: string
  addrs: string[]
  /** The server also serves the model's client parts (embeddings, final norm, LM head). */
  offersHead: boolean
  capacity: { sessions: number, freeSessions: number }
  /** Plexus software version. */
  version: string
  /** 'verifier': re-computes others' steps on these blocks and serves no sessions (absent: a server). */
  role?: 'server' | 'verifier'
}

export interface AnnouncementPayload extends RecordPayload, AnnouncementBody {
  kind: 'announcement'
}

export const ANNOUNCEMENT_KIND = 'announcement'
export const ANNOUNCEMENT_SCHEMA = 'announcement'

/** Signs an announcement, refusing one that receivers would reject. */
export async function signAnnouncement (privateKey: PrivateKey, body: AnnouncementBody, opts: SignRecordOptions = {}): Promise<Uint8Array> {
  const bytes = await signRecord(privateKey, ANNOUNCEMENT_KIND, body, opts)
  try {
    verifyAnnouncement(bytes, { ...(opts.now != null ? { now: opts.now } : {}) })
  } catch (err) {
    throw new Error(`cannot sign announcement: ${(err as Error).message}`)
  }
  return bytes
}

/** verifyRecord against the announcement schema, plus the rules a schema cannot express. */
export function verifyAnnouncement (bytes: Uint8Array, opts: Omit<VerifyRecordOptions, 'kind' | 'schema'> & { expectedPeer?: string | PeerId } = {}): AnnouncementPayload {
  const a = verifyRecord<AnnouncementPayload>(bytes, { ...opts, kind: ANNOUNCEMENT_KIND, schema: ANNOUNCEMENT_SCHEMA })
  const problem = spanProblem(a)
  if (problem != null) throw new RecordError('schema', `announcement ${problem}`)
  for (const s of a.addrs) {
    try { multiaddr(s) } catch (err) { throw new RecordError('schema', `announcement address "${s}" is not a multiaddr: ${(err as Error).message}`) }
  }
  return a
}

function spanProblem (a: AnnouncementBody): string | undefined {
  if (!(a.start < a.end)) return `span [${a.start}, ${a.end}) is empty (start must be < end)`
  if (a.end > a.numBlocks) return `span [${a.start}, ${a.end}) runs past the model's ${a.numBlocks} blocks`
  if (a.capacity.freeSessions > a.capacity.sessions) return `capacity has ${a.capacity.freeSessions} free of ${a.capacity.sessions} sessions`
  return undefined
}
