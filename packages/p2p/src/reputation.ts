import { peerIdFromString } from '@libp2p/peer-id'
import { DEFAULT_MAX_RECORD_TTL_MS, RecordError, signRecord, verifyRecord } from './records.ts'
import type { RecordPayload, SignRecordOptions, VerifyRecordOptions } from './records.ts'
import type { PlexusNode } from './node.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

/**
 * Reputation records: what a verifier found when it spot-checked one server, signed with the
 * verifier's peer key (records.ts) and stored in the DHT under
 *
 *   /plexus-rep/<subject>/<verifier>
 *
 * so each verifier has exactly one slot per server. Every DHT server runs `reputationValidator`
 * on a PUT, so a record that does not verify, or that sits in a slot other than the one its own
 * signer and subject name, is refused by every honest peer: nobody can forge a verifier's
 * verdict or write into its slot. Readers keep the valid record with the highest `seq`.
 *
 * kad-dht's PUT handler overwrites a stored record without asking the selector, so a node's
 * validator (`ReputationValidator`) remembers the newest record it accepted per slot and refuses
 * an older one: a replay of a verifier's earlier (validly signed) record cannot roll a peer's
 * copy back. Verifiers set seq to the record's issue time, so it only grows, across restarts too.
 * Limits: a peer that restarted (or forgot the slot: the memory is bounded) takes a replay until
 * the verifier republishes (on a timer); getters still pick the highest seq among all copies
 * they see, and every copy dies at its own expiresAt (at most 24 h). One slot per (subject,
 * verifier): a verifier checking a server on several models publishes one record at a time.
 */

export const REPUTATION_KIND = 'reputation'
/** Schema id: schemas/reputation-record.schema.json. */
export const REPUTATION_SCHEMA = 'reputation-record'
/** First segment of the DHT key: kad-dht picks validator and selector by it. */
export const REPUTATION_NAMESPACE = 'plexus-rep'
/** Records live as long as records.ts allows; verifiers republish well before that. */
export const DEFAULT_REPUTATION_TTL_MS = DEFAULT_MAX_RECORD_TTL_MS
export const DEFAULT_REPUTATION_PUT_TIMEOUT_MS = 30_000
export const DEFAULT_REPUTATION_GET_TIMEOUT_MS = 10_000

/** What a verifier says about one server (schemas/reputation-record.schema.json). */
export interface ReputationBody {
  /** The checked server's peer id. */
  subject: string
  /** 64 hex digits (runtime's model id) of the model the checks ran on. */
  modelId: string
  /** Spot checks that matched the verifier's own computation. */
  passed: number
  /** Spot checks that did not. */
  failed: number
  /** BLAKE3 digests (64 hex) of fraud reports against the subject; at most 64, no duplicates. */
  reports: string[]
  /** Version of this verifier's record for this subject; each new one must be higher. */
  seq: number
}

export type ReputationRecord = RecordPayload & ReputationBody & { kind: 'reputation' }

export interface VerifyReputationOptions extends Omit<VerifyRecordOptions, 'kind' | 'schema' | 'expectedPeer'> {
  /** The record must be signed by this verifier. */
  expectedVerifier?: string | PeerId
  /** The record must be about this server. */
  expectedSubject?: string | PeerId
}

const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { fatal: true })
const PEER_ID = '12D3KooW[1-9A-HJ-NP-Za-km-z]{44}'
const KEY_RE = new RegExp(`^/${REPUTATION_NAMESPACE}/(${PEER_ID})/(${PEER_ID})$`)

/** Signs a reputation record (default lifetime 24 h), refusing one that receivers would reject. */
export async function signReputation (privateKey: PrivateKey, body: ReputationBody, opts: SignRecordOptions = {}): Promise<Uint8Array> {
  const bytes = await signRecord(privateKey, REPUTATION_KIND, body, { ...opts, ttlMs: opts.ttlMs ?? DEFAULT_REPUTATION_TTL_MS })
  try {
    verifyReputation(bytes, { ...(opts.now != null ? { now: opts.now } : {}) })
  } catch (err) {
    throw new Error(`cannot sign reputation record: ${(err as Error).message}`)
  }
  return bytes
}

/** verifyRecord against the reputation schema, plus who signed it and whom it is about. */
export function verifyReputation (bytes: Uint8Array, opts: VerifyReputationOptions = {}): ReputationRecord {
  const { expectedVerifier, expectedSubject, ...rest } = opts
  const r = verifyRecord<ReputationRecord>(bytes, { ...rest, kind: REPUTATION_KIND, schema: REPUTATION_SCHEMA })
  if (expectedVerifier != null && r.peer !== expectedVerifier.toString()) {
    throw new RecordError('peer', `reputation record is signed by verifier ${r.peer}, expected verifier ${expectedVerifier.toString()}`)
  }
  if (expectedSubject != null && r.subject !== expectedSubject.toString()) {
    throw new RecordError('peer', `reputation record is about subject ${r.subject}, expected subject ${expectedSubject.toString()}`)
  }
  return r
}

/** UTF-8 of `/plexus-rep/<subject>/<verifier>`: the DHT slot of one verifier's record on one server. */
export function reputationKey (subject: string | PeerId, verifier: string | PeerId): Uint8Array {
  const key = `/${REPUTATION_NAMESPACE}/${subject.toString()}/${verifier.toString()}`
  parseReputationKey(key) // refuse to build a key that every validator would refuse
  return enc.encode(key)
}

/** The subject and verifier a reputation key names; throws a RecordError for any other shape. */
export function parseReputationKey (key: Uint8Array | string): { subject: string, verifier: string } {
  let text: string
  try {
    text = typeof key === 'string' ? key : dec.decode(key)
  } catch {
    throw new RecordError('malformed', 'reputation key is not UTF-8')
  }
  const m = KEY_RE.exec(text)
  if (m == null) throw new RecordError('malformed', `reputation key ${JSON.stringify(text.slice(0, 200))} is not /${REPUTATION_NAMESPACE}/<subject peer id>/<verifier peer id>`)
  for (const id of [m[1], m[2]]) {
    // the pattern alone admits strings that do not decode to an Ed25519 key
    let ok = false
    try { ok = peerIdFromString(id).type === 'Ed25519' } catch {}
    if (!ok) throw new RecordError('malformed', `reputation key names ${id}, which is not an Ed25519 peer id`)
  }
  return { subject: m[1], verifier: m[2] }
}

/**
 * kad-dht validator for the `plexus-rep` namespace, run on every PUT received and every record
 * fetched: the record must verify, and be signed by the verifier and about the subject its key
 * names, so that a peer can fill only its own slots.
 */
export async function reputationValidator (key: Uint8Array, value: Uint8Array): Promise<void> {
  const { subject, verifier } = parseReputationKey(key)
  verifyReputation(value, { expectedSubject: subject, expectedVerifier: verifier })
}

/** Slots a ReputationValidator remembers by default. */
export const DEFAULT_REPUTATION_SLOTS_REMEMBERED = 65_536

/**
 * A node's validator for the `plexus-rep` namespace, with memory: besides everything
 * `reputationValidator` checks, it refuses a record older (lower seq, or same seq issued
 * earlier) than the newest one it accepted for that slot and that has not expired yet.
 * Remembers at most `maxSlots` slots (the least recently accepted is forgotten first).
 */
export class ReputationValidator {
  private readonly newest = new Map<string, { seq: number, issuedAt: number, expiresAt: number }>()
  private readonly maxSlots: number

  constructor (opts: { maxSlots?: number } = {}) {
    this.maxSlots = opts.maxSlots ?? DEFAULT_REPUTATION_SLOTS_REMEMBERED
  }

  get size (): number { return this.newest.size }

  /** For kad-dht's `validators`. */
  readonly validate = async (key: Uint8Array, value: Uint8Array): Promise<void> => {
    const { subject, verifier } = parseReputationKey(key)
    const r = verifyReputation(value, { expectedSubject: subject, expectedVerifier: verifier })
    const slot = `${subject}/${verifier}`
    const known = this.newest.get(slot)
    if (known != null && known.expiresAt > Date.now() && (r.seq < known.seq || (r.seq === known.seq && r.issuedAt < known.issuedAt))) {
      throw new RecordError('stale', `reputation record seq ${r.seq} of ${verifier} about ${subject} is older than seq ${known.seq} already held (a replay?)`)
    }
    this.newest.delete(slot)
    this.newest.set(slot, { seq: r.seq, issuedAt: r.issuedAt, expiresAt: r.expiresAt })
    while (this.newest.size > this.maxSlots) this.newest.delete(this.newest.keys().next().value!)
  }
}

/**
 * kad-dht selector: index of the valid record with the highest seq (ties: the later issuedAt,
 * then the first). Invalid records are never chosen; if none is valid this throws.
 */
export function reputationSelector (key: Uint8Array, values: Uint8Array[]): number {
  const best = pickBest(key, values)
  if (best == null) throw new RecordError('malformed', `none of the ${values.length} records under this reputation key is valid`)
  return best.index
}

function pickBest (key: Uint8Array, values: Uint8Array[]): { index: number, record: ReputationRecord } | undefined {
  let slot: { subject: string, verifier: string }
  try { slot = parseReputationKey(key) } catch { return undefined }
  let best: { index: number, record: ReputationRecord } | undefined
  for (const [index, value] of values.entries()) {
    let record: ReputationRecord
    try {
      record = verifyReputation(value, { expectedSubject: slot.subject, expectedVerifier: slot.verifier })
    } catch {
      continue
    }
    if (best == null || record.seq > best.record.seq || (record.seq === best.record.seq && record.issuedAt > best.record.issuedAt)) {
      best = { index, record }
    }
  }
  return best
}

export interface PutReputationOptions {
  signal?: AbortSignal
  /** Deadline of the put; the count reached by then is returned. Default 30 s. */
  timeoutMs?: number
}

/**
 * Stores a signed reputation record under its slot (subject and signer taken from the record)
 * on the closest DHT peers; returns how many remote peers confirmed storing it. The record is
 * verified first: an invalid one would be refused by every peer anyway, so fail loudly here.
 */
export async function putReputation (node: PlexusNode, record: Uint8Array, opts: PutReputationOptions = {}): Promise<number> {
  const r = verifyReputation(record)
  const key = reputationKey(r.subject, r.peer)
  const log = node.logger.forComponent('plexus:reputation')
  // an older record than this node holds is refused here as every peer would refuse it; and
  // kad-dht stores a node's own PUT without running its validator, which must still learn of
  // it, or a replay of an older record would overwrite the node's own copy
  await node.services.plexus.reputation.validate(key, record)
  const deadline = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_REPUTATION_PUT_TIMEOUT_MS)
  const signal = opts.signal != null ? AbortSignal.any([opts.signal, deadline]) : deadline
  const stored = new Set<string>()
  let errors = 0
  try {
    for await (const e of node.services.dht.put(key, record, { signal })) {
      // a peer that stored the record echoes it back; kad-dht also emits PEER_RESPONSEs of
      // the FIND_NODE lookups that precede the put, which must not count
      if (e.name === 'PEER_RESPONSE' && e.messageName === 'PUT_VALUE' && e.record != null && sameBytes(e.record.value, record)) {
        stored.add(e.from.toString())
      } else if (e.name === 'QUERY_ERROR') {
        errors++
      }
    }
  } catch (err) {
    if (opts.signal?.aborted === true || !deadline.aborted) throw err
    log('put of %s seq %d timed out after %d peers stored it', r.subject, r.seq, stored.size)
  }
  log('reputation of %s by %s seq %d stored on %d peers (%d query errors)', r.subject, r.peer, r.seq, stored.size, errors)
  return stored.size
}

export interface GetReputationOptions {
  signal?: AbortSignal
  /** Deadline of the lookup; the best valid record seen by then is returned. Default 10 s. */
  timeoutMs?: number
}

/**
 * The newest valid record `verifier` published about `subject`, or undefined when there is
 * none. Every candidate is verified here again, whatever the DHT already checked.
 */
export async function getReputation (node: PlexusNode, subject: string | PeerId, verifier: string | PeerId, opts: GetReputationOptions = {}): Promise<ReputationRecord | undefined> {
  const key = reputationKey(subject, verifier)
  const log = node.logger.forComponent('plexus:reputation')
  const deadline = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_REPUTATION_GET_TIMEOUT_MS)
  const signal = opts.signal != null ? AbortSignal.any([opts.signal, deadline]) : deadline
  // kad-dht yields its chosen VALUE only at the very end, after "correcting" stale peers (which
  // throws if a peer refuses the correction), so also keep each record peers returned on the way
  const candidates: Uint8Array[] = []
  try {
    for await (const e of node.services.dht.get(key, { signal })) {
      if (e.name === 'VALUE') candidates.push(e.value)
      else if (e.name === 'PEER_RESPONSE' && e.record != null && sameBytes(e.record.key, key)) candidates.push(e.record.value)
    }
  } catch (err) {
    if (opts.signal?.aborted === true) throw err
    if (deadline.aborted) log('get of %s by %s timed out with %d candidates', subject, verifier, candidates.length)
    else log.error('get of %s by %s failed with %d candidates: %e', subject, verifier, candidates.length, err)
  }
  const best = pickBest(key, candidates)
  if (best == null && candidates.length > 0) log('no valid reputation record of %s by %s among %d candidates', subject, verifier, candidates.length)
  return best?.record
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)
}
