// Signed reputation records: signing and verifying, the DHT validator and selector, and a real
// loopback DHT whose peers store a verifier's records and refuse forged ones.
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  signReputation, verifyReputation, reputationKey, parseReputationKey, reputationValidator, reputationSelector,
  putReputation, getReputation, signRecord, RecordError, RECORD_SIGNING_PREFIX, REPUTATION_NAMESPACE,
  createPlexusNode, dialBootstrap, waitForDhtPeers
} from '@plexus/p2p'
import type { PlexusNode, PrivateKey, ReputationBody } from '@plexus/p2p'
import { rejects, tamper } from '../../../test/support/records.ts'

const MODEL = '7c'.repeat(32)
const DIGEST = (n: number): string => n.toString(16).padStart(2, '0').repeat(32)
const enc = new TextEncoder()
const dec = new TextDecoder()
const idOf = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

const body = (subject: string, over: Partial<ReputationBody> = {}): ReputationBody => ({
  subject, modelId: MODEL, passed: 5, failed: 1, reports: [DIGEST(1)], seq: 1, ...over
})

/** A record naming `claimed` as its peer but signed by `signer`'s key. */
async function signedByOther (signer: PrivateKey, claimed: string, subject: string, seq: number): Promise<Uint8Array> {
  const now = Date.now()
  const payload = JSON.stringify({ kind: 'reputation', peer: claimed, issuedAt: now, expiresAt: now + 60_000, ...body(subject, { seq }) })
  const sig = await signer.sign(enc.encode(RECORD_SIGNING_PREFIX + payload))
  return enc.encode(JSON.stringify({ payload, sig: Buffer.from(sig).toString('base64') }))
}

describe('reputation records', () => {
  let verifier: PrivateKey
  let other: PrivateKey
  let subject: string
  let otherSubject: string
  before(async () => {
    verifier = await generateKeyPair('Ed25519')
    other = await generateKeyPair('Ed25519')
    subject = idOf(await generateKeyPair('Ed25519'))
    otherSubject = idOf(await generateKeyPair('Ed25519'))
  })

  it('sign → verify round trip; lifetime 24 h by default', async () => {
    const bytes = await signReputation(verifier, body(subject, { passed: 12, failed: 2, reports: [DIGEST(1), DIGEST(2)], seq: 7 }))
    const r = verifyReputation(bytes, { expectedVerifier: idOf(verifier), expectedSubject: subject })
    assert.equal(r.kind, 'reputation')
    assert.equal(r.peer, idOf(verifier))
    assert.deepEqual([r.subject, r.modelId, r.passed, r.failed, r.reports, r.seq], [subject, MODEL, 12, 2, [DIGEST(1), DIGEST(2)], 7])
    assert.equal(r.expiresAt - r.issuedAt, 24 * 3600_000)
  })

  it('rejects an altered payload', async () => {
    const bytes = await signReputation(verifier, body(subject))
    const altered = tamper(bytes, p => p.replace('"failed":1', '"failed":0'))
    rejects(() => verifyReputation(altered), 'signature', new RegExp(`^record signature does not verify for its peer ${idOf(verifier)} \\(forged or altered\\)$`))
  })

  it('rejects a record signed by another key than its peer', async () => {
    const forged = await signedByOther(other, idOf(verifier), subject, 1)
    rejects(() => verifyReputation(forged), 'signature', new RegExp(`does not verify for its peer ${idOf(verifier)}`))
  })

  it('rejects an expired record', async () => {
    const bytes = await signReputation(verifier, body(subject), { ttlMs: 60_000, now: Date.now() - 2 * 3600_000 })
    rejects(() => verifyReputation(bytes), 'expired', /^record expired .* ago/)
  })

  it('rejects schema violations, and refuses to sign them', async () => {
    const negative = await signRecord(verifier, 'reputation', body(subject, { passed: -1 }))
    rejects(() => verifyReputation(negative), 'schema', /^record payload does not match schema "reputation-record" at \/passed: must be >= 0$/)
    await assert.rejects(signReputation(verifier, body(subject, { passed: -1 })), /^Error: cannot sign reputation record: .*at \/passed: must be >= 0$/)

    const tooMany = await signRecord(verifier, 'reputation', body(subject, { reports: Array.from({ length: 65 }, (_, i) => DIGEST(i)) }))
    rejects(() => verifyReputation(tooMany), 'schema', /at \/reports: must NOT have more than 64 items/)
    const badDigest = await signRecord(verifier, 'reputation', body(subject, { reports: ['xyz'] }))
    rejects(() => verifyReputation(badDigest), 'schema', /at \/reports\/0: must match pattern/)
    const extra = await signRecord(verifier, 'reputation', { ...body(subject), trust: 1 })
    rejects(() => verifyReputation(extra), 'schema', /must NOT have additional properties "trust"/)
    const wrongKind = await signRecord(verifier, 'announcement', body(subject))
    rejects(() => verifyReputation(wrongKind), 'kind', /^record kind is "announcement", expected "reputation"$/)
  })

  it('rejects a record about another subject or by another verifier than expected', async () => {
    const bytes = await signReputation(verifier, body(subject))
    rejects(() => verifyReputation(bytes, { expectedSubject: otherSubject }), 'peer',
      new RegExp(`^reputation record is about subject ${subject}, expected subject ${otherSubject}$`))
    rejects(() => verifyReputation(bytes, { expectedVerifier: idOf(other) }), 'peer',
      new RegExp(`^reputation record is signed by verifier ${idOf(verifier)}, expected verifier ${idOf(other)}$`))
  })

  it('keys are /plexus-rep/<subject>/<verifier>; other shapes are refused', () => {
    const key = reputationKey(subject, idOf(verifier))
    assert.equal(dec.decode(key), `/${REPUTATION_NAMESPACE}/${subject}/${idOf(verifier)}`)
    assert.deepEqual(parseReputationKey(key), { subject, verifier: idOf(verifier) })
    for (const bad of [`/plexus-rep/${subject}`, `/plexus-rep/${subject}/${idOf(verifier)}/x`, `/plexus/${subject}/${idOf(verifier)}`,
      `/plexus-rep/${subject}/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N`, `/plexus-rep/${subject}/12D3KooW${'1'.repeat(44)}`]) {
      rejects(() => parseReputationKey(enc.encode(bad)), 'malformed', /^reputation key .*(is not \/plexus-rep\/|not an Ed25519 peer id)/)
    }
    rejects(() => parseReputationKey(new Uint8Array([0xff, 0xfe])), 'malformed', /not UTF-8/)
    assert.throws(() => reputationKey('nobody', idOf(verifier)), RecordError)
  })

  it('validator accepts a record in its own slot only', async () => {
    const bytes = await signReputation(verifier, body(subject))
    await reputationValidator(reputationKey(subject, idOf(verifier)), bytes)
    // under another subject's key
    await assert.rejects(reputationValidator(reputationKey(otherSubject, idOf(verifier)), bytes),
      (err: Error) => err instanceof RecordError && err.message === `reputation record is about subject ${subject}, expected subject ${otherSubject}`)
    // a verifier cannot write into another verifier's slot: `other`'s genuine record about the subject
    const intruder = await signReputation(other, body(subject, { failed: 99, seq: 1000 }))
    await assert.rejects(reputationValidator(reputationKey(subject, idOf(verifier)), intruder),
      (err: Error) => err instanceof RecordError && err.message === `reputation record is signed by verifier ${idOf(other)}, expected verifier ${idOf(verifier)}`)
    // garbage, an altered record, a badly shaped key
    await assert.rejects(reputationValidator(reputationKey(subject, idOf(verifier)), enc.encode('garbage')), /^RecordError: record is not valid JSON/)
    await assert.rejects(reputationValidator(reputationKey(subject, idOf(verifier)), new Uint8Array(0)), /^RecordError: record is not valid JSON/)
    await assert.rejects(reputationValidator(reputationKey(subject, idOf(verifier)), tamper(bytes, p => p.replace('"seq":1', '"seq":2'))), /does not verify/)
    await assert.rejects(reputationValidator(enc.encode(`/plexus-rep/${subject}`), bytes), /is not \/plexus-rep\/<subject peer id>\/<verifier peer id>/)
  })

  it('selector picks the valid record with the highest seq (ties: later issuedAt); invalid ones never', async () => {
    const key = reputationKey(subject, idOf(verifier))
    const now = Date.now()
    const seq1 = await signReputation(verifier, body(subject, { seq: 1 }), { now })
    const seq3early = await signReputation(verifier, body(subject, { seq: 3 }), { now: now - 1000 })
    const seq3late = await signReputation(verifier, body(subject, { seq: 3, passed: 6 }), { now })
    const seq2 = await signReputation(verifier, body(subject, { seq: 2 }), { now })
    const forged = tamper(seq1, p => p.replace('"seq":1', '"seq":99'))
    const intruder = await signReputation(other, body(subject, { seq: 500 }))
    const wrongSubject = await signReputation(verifier, body(otherSubject, { seq: 400 }))
    const expired = await signReputation(verifier, body(subject, { seq: 300 }), { ttlMs: 1000, now: now - 3600_000 })
    const values = [seq1, forged, seq3early, enc.encode('garbage'), seq3late, intruder, wrongSubject, expired, seq2]
    assert.equal(reputationSelector(key, values), 4)
    assert.equal(reputationSelector(key, [seq3late, seq3early]), 0)
    assert.equal(reputationSelector(key, [forged, seq1]), 1)
    assert.throws(() => reputationSelector(key, [forged, intruder, expired]), /none of the 3 records under this reputation key is valid/)
  })
})

describe('reputation records in a loopback DHT', function () {
  this.timeout(60_000)
  const RELAXED_MONITOR = { pingInterval: 10_000, pingTimeout: { minTimeout: 10_000, maxTimeout: 20_000 } }
  const keys = new Map<PlexusNode, PrivateKey>()
  let boot: PlexusNode
  let servers: PlexusNode[] = []
  let client: PlexusNode
  // servers[0] is the verifier, servers[1] an attacker, servers[2] the checked server
  let verifierNode: PlexusNode
  let attacker: PlexusNode
  let subject: string
  let verifierId: string
  // the last record the verifier published
  let latest: Uint8Array = new Uint8Array(0)
  const all = (): PlexusNode[] => [boot, ...servers, client].filter(n => n != null)
  const key = (n: PlexusNode): PrivateKey => {
    const k = keys.get(n)
    if (k == null) throw new Error('no key for node')
    return k
  }
  const make = async (dhtMode: 'server' | 'client'): Promise<PlexusNode> => {
    const privateKey = await generateKeyPair('Ed25519')
    const node = await createPlexusNode({ privateKey, dhtMode, listen: ['/ip4/127.0.0.1/tcp/0'], connectionMonitor: RELAXED_MONITOR })
    keys.set(node, privateKey)
    return node
  }

  /** Puts straight through kad-dht, bypassing putReputation; the peers that confirmed storing it. */
  async function rawPut (node: PlexusNode, dhtKey: Uint8Array, value: Uint8Array): Promise<{ stored: string[], errors: number }> {
    const stored: string[] = []
    let errors = 0
    for await (const e of node.services.dht.put(dhtKey, value, { signal: AbortSignal.timeout(10_000) })) {
      if (e.name === 'PEER_RESPONSE' && e.messageName === 'PUT_VALUE') stored.push(e.from.toString())
      if (e.name === 'QUERY_ERROR') errors++
    }
    return { stored, errors }
  }

  /** The DHT records `node` holds in its datastore, raw (a protobuf that embeds the value). */
  async function storedRecords (node: PlexusNode): Promise<Buffer[]> {
    const ds = (node as unknown as { components: { datastore: { query: (q: { prefix: string }) => AsyncIterable<{ value: Uint8Array }> } } }).components.datastore
    const out: Buffer[] = []
    for await (const { value } of ds.query({ prefix: '/dht/record' })) out.push(Buffer.from(value))
    return out
  }
  const holds = (records: Buffer[], value: Uint8Array): boolean => records.some(r => r.includes(Buffer.from(value)))

  before(async () => {
    boot = await make('server')
    servers = await Promise.all([0, 1, 2].map(async () => await make('server')))
    client = await make('client')
    ;[verifierNode, attacker] = servers
    subject = servers[2].peerId.toString()
    verifierId = verifierNode.peerId.toString()
    const bootAddr = boot.getMultiaddrs()[0].toString()
    for (const n of [...servers, client]) await dialBootstrap(n, [bootAddr], { timeoutMs: 3000 })
    // every DHT server should know the others, so puts reach all of them
    await Promise.all([...servers, client].map(async n => { await waitForDhtPeers(n, { minPeers: 1, signal: AbortSignal.timeout(10_000) }) }))
    await Promise.all(servers.map(async n => { await waitForDhtPeers(n, { minPeers: 3, signal: AbortSignal.timeout(10_000) }) }))
  })

  after(async () => {
    await Promise.all(all().map(async n => { await n.stop() }))
  })

  it('nothing published yet: getReputation returns undefined', async () => {
    assert.equal(await getReputation(client, subject, verifierId, { timeoutMs: 5000 }), undefined)
  })

  it('a verifier puts a record; another node gets it back and it verifies', async () => {
    const bytes = await signReputation(key(verifierNode), body(subject, { passed: 3, failed: 0, reports: [], seq: 1 }))
    const stored = await putReputation(verifierNode, bytes, { signal: AbortSignal.timeout(10_000) })
    // the other DHT servers: boot, the attacker, the subject (the client stores nothing)
    assert.equal(stored, 3)
    const r = await getReputation(client, subject, verifierId, { timeoutMs: 5000 })
    assert.ok(r != null, 'record not found')
    assert.deepEqual(r, verifyReputation(bytes))
    assert.deepEqual([r.peer, r.subject, r.passed, r.seq], [verifierId, subject, 3, 1])
  })

  it('a newer seq replaces the older for getters', async () => {
    const bytes = await signReputation(key(verifierNode), body(subject, { passed: 7, failed: 2, reports: [DIGEST(9)], seq: 2 }))
    latest = bytes
    assert.equal(await putReputation(verifierNode, bytes, { signal: AbortSignal.timeout(10_000) }), 3)
    for (const reader of [client, attacker, boot]) {
      const r = await getReputation(reader, subject, verifierId, { timeoutMs: 5000 })
      assert.deepEqual([r?.seq, r?.passed, r?.failed, r?.reports], [2, 7, 2, [DIGEST(9)]])
    }
  })

  it('putReputation refuses an invalid record before touching the network', async () => {
    const genuine = await signReputation(key(verifierNode), body(subject, { seq: 50 }))
    await assert.rejects(putReputation(verifierNode, tamper(genuine, p => p.replace('"failed":1', '"failed":0'))), /^RecordError: record signature does not verify/)
  })

  it('remote peers refuse forged records put straight through the DHT', async () => {
    const slot = reputationKey(subject, verifierId)
    const genuine = latest
    const forgeries = {
      // the verifier's record with its verdict changed and a seq that would win, old signature
      altered: tamper(genuine, p => p.replace('"passed":7', '"passed":0').replace('"failed":2', '"failed":70').replace('"seq":2', '"seq":999')),
      // the attacker's own genuinely signed record, written into the verifier's slot
      wrongSlot: await signReputation(key(attacker), body(subject, { passed: 0, failed: 70, seq: 999 })),
      // claims the verifier as its peer, signed with the attacker's key
      wrongKey: await signedByOther(key(attacker), verifierId, subject, 999),
      garbage: enc.encode('{"payload":"{}","sig":"x"}')
    }
    for (const [name, forged] of Object.entries(forgeries)) {
      const { stored, errors } = await rawPut(attacker, slot, forged)
      assert.deepEqual(stored, [], `${name}: stored by ${stored.join(', ')}`)
      assert.ok(errors >= 3, `${name}: only ${errors} query errors`)
    }
    // no remote peer holds any forgery, and the DHT servers still hold the genuine record
    for (const n of [boot, verifierNode, servers[2], client]) {
      const records = await storedRecords(n)
      for (const [name, forged] of Object.entries(forgeries)) assert.ok(!holds(records, forged), `${n.peerId.toString()} stored the ${name} forgery`)
    }
    for (const n of [boot, servers[2]]) assert.ok(holds(await storedRecords(n), latest), `${n.peerId.toString()} lost the genuine record`)
    // kad-dht's put stores locally without validating, so the attacker holds the last forgery
    // and serves it on GET_VALUE; readers drop it and still get the genuine record
    assert.ok(holds(await storedRecords(attacker), forgeries.garbage))
    for (const reader of [client, boot]) {
      const r = await getReputation(reader, subject, verifierId, { timeoutMs: 5000 })
      assert.deepEqual([r?.peer, r?.seq, r?.passed, r?.failed], [verifierId, 2, 7, 2])
    }
  })

  it('a slot nobody wrote stays empty even after forgery attempts into it', async () => {
    const emptySlotSubject = servers[1].peerId.toString()
    const forged = await signedByOther(key(attacker), verifierId, emptySlotSubject, 5)
    const { stored } = await rawPut(attacker, reputationKey(emptySlotSubject, verifierId), forged)
    assert.deepEqual(stored, [])
    assert.equal(await getReputation(client, emptySlotSubject, verifierId, { timeoutMs: 5000 }), undefined)
  })
})
