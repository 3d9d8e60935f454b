// Keys on disk, signed records and the announcement schema: no network involved.
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  loadOrCreateKey, signRecord, verifyRecord, signAnnouncement, verifyAnnouncement, validate
} from '@plexus/p2p'
import type { AnnouncementBody, PrivateKey } from '@plexus/p2p'
import { rejects } from '../../../test/support/records.ts'

const MODEL = 'ab'.repeat(32)
const body = (over: Partial<AnnouncementBody> = {}): AnnouncementBody => ({
  modelId: MODEL,
  modelName: 'tiny-llama',
  start: 0,
  end: 4,
  numBlocks: 8,
  throughput: 12.5,
  addrs: ['/ip4/127.0.0.1/tcp/4001'],
  offersHead: true,
  capacity: { sessions: 4, freeSessions: 3 },
  version: '0.1.0',
  ...over
})

describe('p2p: key files', () => {
  let dir: string
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'plexus-keys-')) })
  after(async () => { await rm(dir, { recursive: true, force: true }) })

  it('creates an Ed25519 key with mode 0600 and loads the same identity again', async () => {
    const path = join(dir, 'sub', 'node.key')
    const a = await loadOrCreateKey(path)
    assert.equal(a.type, 'Ed25519')
    assert.equal((await stat(path)).mode & 0o777, 0o600)
    const b = await loadOrCreateKey(path)
    assert.equal(peerIdFromPrivateKey(b).toString(), peerIdFromPrivateKey(a).toString())
  })

  it('two processes creating the same key file at once end up with one identity', async () => {
    const path = join(dir, 'race.key')
    const keys = await Promise.all([loadOrCreateKey(path), loadOrCreateKey(path), loadOrCreateKey(path)])
    const ids = new Set(keys.map(k => peerIdFromPrivateKey(k).toString()))
    assert.equal(ids.size, 1)
  })

  it('a corrupt key file is an error naming the file', async () => {
    const path = join(dir, 'corrupt.key')
    await writeFile(path, 'definitely not a protobuf key')
    await assert.rejects(loadOrCreateKey(path), (err: Error) => {
      assert.match(err.message, /^key file .*corrupt\.key is corrupt/)
      return true
    })
    const empty = join(dir, 'empty.key')
    await writeFile(empty, '')
    await assert.rejects(loadOrCreateKey(empty), /empty\.key is corrupt/)
  })
})

describe('p2p: signed records', () => {
  let key: PrivateKey
  let other: PrivateKey
  let peer: string
  before(async () => {
    key = await generateKeyPair('Ed25519')
    other = await generateKeyPair('Ed25519')
    peer = peerIdFromPrivateKey(key).toString()
  })

  it('accepts a valid announcement and returns its payload', async () => {
    const bytes = await signAnnouncement(key, body())
    const a = verifyAnnouncement(bytes, { expectedPeer: peer })
    assert.equal(a.kind, 'announcement')
    assert.equal(a.peer, peer)
    assert.equal(a.end, 4)
    assert.deepEqual(a.capacity, { sessions: 4, freeSessions: 3 })
    assert.ok(a.expiresAt > a.issuedAt)
    // the generic entry point with the schema id does the same
    assert.equal(verifyRecord(bytes, { kind: 'announcement', schema: 'announcement', expectedPeer: peer }).peer, peer)
  })

  it('rejects each kind of bad record with its own message', async () => {
    const good = await signAnnouncement(key, body())
    const envelope = JSON.parse(new TextDecoder().decode(good)) as { payload: string, sig: string }
    const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o))
    const messages = new Set<string>()
    const add = (m: string): void => { messages.add(m.replace(/12D3KooW\w+/g, 'P').replace(/[\d.]+ s/g, 'N s')) }

    // altered payload under the original signature
    const altered = { ...envelope, payload: envelope.payload.replace('"throughput":12.5', '"throughput":99') }
    add(rejects(() => verifyAnnouncement(enc(altered)), 'signature', /signature does not verify for its peer 12D3KooW\w+ \(forged or altered\)/))
    // a payload that names us, signed by another key
    const forged = await signRecord(other, 'announcement', body())
    const forgedEnv = JSON.parse(new TextDecoder().decode(forged)) as { payload: string, sig: string }
    const claimsUs = { payload: forgedEnv.payload.replace(peerIdFromPrivateKey(other).toString(), peer), sig: forgedEnv.sig }
    rejects(() => verifyAnnouncement(enc(claimsUs)), 'signature', /does not verify/)
    // a valid record of another peer handed out by us
    add(rejects(() => verifyAnnouncement(forged, { expectedPeer: peer }), 'peer', /signed by 12D3KooW\w+ but came from 12D3KooW\w+/))
    // expired, and issued in the future
    const old = await signRecord(key, 'announcement', body(), { now: Date.now() - 10 * 60_000, ttlMs: 60_000 })
    add(rejects(() => verifyAnnouncement(old), 'expired', /record expired \d+ s ago/))
    const future = await signRecord(key, 'announcement', body(), { now: Date.now() + 3600_000 })
    add(rejects(() => verifyAnnouncement(future), 'future', /issued .* in the future/))
    // a small clock skew is fine
    verifyAnnouncement(await signRecord(key, 'announcement', body(), { now: Date.now() + 5000 }))
    // schema violations: bad model id, unknown field, empty span
    const badId = await signRecord(key, 'announcement', body({ modelId: 'xyz' }))
    add(rejects(() => verifyAnnouncement(badId), 'schema', /schema "announcement" at \/modelId: must match pattern/))
    const extra = await signRecord(key, 'announcement', { ...body(), extra: 1 })
    rejects(() => verifyAnnouncement(extra), 'schema', /at \(root\): must NOT have additional properties "extra"/)
    const empty = await signRecord(key, 'announcement', body({ start: 4, end: 4 }))
    rejects(() => verifyAnnouncement(empty), 'schema', /span \[4, 4\) is empty/)
    // oversized, not JSON, wrong kind
    const huge = await signRecord(key, 'announcement', body({ modelName: 'x'.repeat(70_000) }))
    add(rejects(() => verifyAnnouncement(huge), 'oversized', /record is \d+ bytes, over the 65536-byte limit/))
    add(rejects(() => verifyAnnouncement(new TextEncoder().encode('{"payload": nope')), 'malformed', /record is not valid JSON/))
    add(rejects(() => verifyRecord(good, { kind: 'session-ticket' }), 'kind', /record kind is "announcement", expected "session-ticket"/))
    assert.equal(messages.size, 8, [...messages].join('\n'))
  })

  it('refuses to sign what receivers would reject', async () => {
    await assert.rejects(signAnnouncement(key, body({ end: 9 })), /cannot sign announcement: announcement span \[0, 9\) runs past the model's 8 blocks/)
    await assert.rejects(signRecord(key, 'announcement', { peer: 'me' }), /must not set "peer"/)
  })

  it('validate() names the schema and the failing path', () => {
    assert.throws(() => validate('announcement', { kind: 'announcement' }), /value does not match schema "announcement" at \(root\): must have required property/)
    assert.throws(() => validate('no-such-schema', {}), /schema "no-such-schema" not found/)
  })
})
