// Reputation and routing under attack: a replayed older reputation record is refused by every
// DHT peer that holds a newer one (seq is the issue time), and self-announced throughput no
// longer steers routes or placement beyond what was measured.
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  signReputation, reputationKey, putReputation, getReputation, ReputationValidator, RecordError,
  createPlexusNode, dialBootstrap, waitForDhtPeers
} from '@plexus/p2p'
import type { PlexusNode, PrivateKey, ReputationBody } from '@plexus/p2p'
import { ObservedThroughput } from '@plexus/client'
import { findRoute } from '@plexus/client'
import type { ServerCandidate } from '@plexus/client'
import { capThroughputs, chooseStart } from '@plexus/server'

const MODEL = '7c'.repeat(32)
const DIGEST = (n: number): string => n.toString(16).padStart(2, '0').repeat(32)
/** The test process's RSS (5 DHT nodes) may grow by this much over 50 replayed PUTs (MiB): queries' transient buffers, not stored records. */
const RSS_BOUND_MIB = 128
const idOf = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()
const body = (subject: string, over: Partial<ReputationBody>): ReputationBody => ({ subject, modelId: MODEL, passed: 5, failed: 0, reports: [], seq: 1, ...over })

describe('hardening: replayed reputation records', function () {
  this.timeout(120_000)
  const RELAXED_MONITOR = { pingInterval: 10_000, pingTimeout: { minTimeout: 10_000, maxTimeout: 20_000 } }
  let nodes: PlexusNode[] = []
  let verifierKey: PrivateKey
  let verifier: PlexusNode
  let attacker: PlexusNode
  let reader: PlexusNode
  let subject: string

  before(async () => {
    verifierKey = await generateKeyPair('Ed25519')
    const make = async (privateKey?: PrivateKey): Promise<PlexusNode> =>
      await createPlexusNode({ privateKey: privateKey ?? await generateKeyPair('Ed25519'), dhtMode: 'server', listen: ['/ip4/127.0.0.1/tcp/0'], connectionMonitor: RELAXED_MONITOR })
    const boot = await make()
    verifier = await make(verifierKey)
    nodes = [boot, verifier, ...await Promise.all([0, 1, 2].map(async () => await make()))]
    ;[, , attacker, reader] = nodes
    subject = nodes[4].peerId.toString()
    const bootAddr = boot.getMultiaddrs()[0].toString()
    for (const n of nodes.slice(1)) await dialBootstrap(n, [bootAddr], { timeoutMs: 3000 })
    await Promise.all(nodes.map(async n => { await waitForDhtPeers(n, { minPeers: 3, signal: AbortSignal.timeout(15_000) }) }))
  })

  after(async () => { await Promise.all(nodes.map(async n => { await n.stop() })) })

  it('the validator refuses a record older than the newest it accepted for the slot, with fault "stale"', async () => {
    const v = new ReputationValidator()
    const key = reputationKey(subject, idOf(verifierKey))
    const now = Date.now()
    const older = await signReputation(verifierKey, body(subject, { seq: now - 5000, failed: 0 }), { now: now - 5000 })
    const newer = await signReputation(verifierKey, body(subject, { seq: now, failed: 3, reports: [DIGEST(1)] }), { now })
    await v.validate(key, older)
    await v.validate(key, newer)
    await v.validate(key, newer) // the same record again (a republish, a correction) is fine
    await assert.rejects(v.validate(key, older), (e: Error) => e instanceof RecordError && e.fault === 'stale' && /is older than seq/.test(e.message))
    // bounded memory: the least recently accepted slot is forgotten first
    const small = new ReputationValidator({ maxSlots: 4 })
    for (let i = 0; i < 20; i++) {
      const k = await generateKeyPair('Ed25519')
      await small.validate(reputationKey(subject, idOf(k)), await signReputation(k, body(subject, { seq: 1 })))
    }
    assert.equal(small.size, 4)
  })

  it('a replay of seq 1 (failed 0) over seq 7 (failed 3) is refused by every peer; readers still get seq 7', async () => {
    const t0 = Date.now() - 60_000
    // a verifier's record as an attacker saved it, then the newer one the verifier published
    const old = await signReputation(verifierKey, body(subject, { seq: t0, failed: 0, passed: 9 }), { now: t0 })
    assert.ok(await putReputation(verifier, old, { timeoutMs: 10_000 }) >= 3)
    const newer = await signReputation(verifierKey, body(subject, { seq: t0 + 7, failed: 3, reports: [DIGEST(7)] }), { now: t0 + 7 })
    assert.ok(await putReputation(verifier, newer, { timeoutMs: 10_000 }) >= 3)
    const rssBefore = process.memoryUsage().rss
    // straight through kad-dht (putReputation would refuse it already: this node holds seq t0 + 7)
    await assert.rejects(putReputation(attacker, old, { timeoutMs: 10_000 }), (e: Error) => e instanceof RecordError && e.fault === 'stale')
    const slot = reputationKey(subject, idOf(verifierKey))
    const stored: string[] = []
    let refusals = 0
    for await (const e of attacker.services.dht.put(slot, old, { signal: AbortSignal.timeout(10_000) })) {
      if (e.name === 'PEER_RESPONSE' && e.messageName === 'PUT_VALUE') stored.push(e.from.toString())
      if (e.name === 'QUERY_ERROR') refusals++
    }
    assert.deepEqual(stored, [], 'no peer stored the replayed older record')
    assert.ok(refusals >= 3, `${refusals} peers refused it`)
    // and many times over
    for (let i = 0; i < 50; i++) {
      try { for await (const e of attacker.services.dht.put(slot, old, { signal: AbortSignal.timeout(5000) })) void e } catch {}
    }
    const grown = (process.memoryUsage().rss - rssBefore) / 2 ** 20
    console.log(`      RSS after 50 replayed PUTs (5 nodes in this process): +${grown.toFixed(0)} MiB (bound ${RSS_BOUND_MIB} MiB)`)
    assert.ok(grown <= RSS_BOUND_MIB)
    for (const n of [reader, nodes[0], nodes[4]]) {
      const r = await getReputation(n, subject, idOf(verifierKey), { timeoutMs: 5000 })
      assert.deepEqual([r?.seq, r?.failed], [t0 + 7, 3], `${n.peerId.toString()} reads the newest record`)
    }
  })
})

describe('hardening: self-reported throughput', () => {
  const peer = (n: number): string => `peer-${n}`

  it('a server announcing 1e9 tokens/s is routed by what the client measured of it', () => {
    // two holders of blocks 0–4: an honest one (announces 50) and a liar (announces 1e9, runs at 10)
    const announced: ServerCandidate[] = [
      { peer: peer(1), start: 0, end: 4, throughput: 50, rttMs: 1 },
      { peer: peer(2), start: 0, end: 4, throughput: 1e9, rttMs: 1 },
      { peer: peer(3), start: 0, end: 4, throughput: 40, rttMs: 1 }
    ]
    assert.equal(findRoute(announced, 0, 4).hops[0].peer, peer(2), 'taken at its word, the liar wins every route')
    const observed = new ObservedThroughput()
    // unmeasured, the claim counts for no more than the median announced figure
    const capped = observed.effective(announced)
    assert.deepEqual(capped, [50, 50, 40])
    // measured: 4 blocks in 400 ms (10 tokens/s per block) against 4 blocks in 80 ms
    for (let i = 0; i < 5; i++) {
      observed.observe({ peer: peer(2), start: 0, end: 4, wallMs: 401 }, 1)
      observed.observe({ peer: peer(1), start: 0, end: 4, wallMs: 81 }, 1)
    }
    const measured = observed.effective(announced)
    assert.ok(Math.abs(measured[1] - 10) < 0.01 && Math.abs(measured[0] - 50) < 0.01, JSON.stringify(measured))
    const route = findRoute(announced.map((c, i) => ({ ...c, throughput: measured[i] })), 0, 4)
    assert.equal(route.hops[0].peer, peer(1))
  })

  it('placement caps announced figures: a liar cannot make its blocks look served', () => {
    // 8 blocks; five honest servers at 10 tokens/s hold 0–4, a liar alone holds 4–8 and claims 1e9
    const spans = [...['a', 'b', 'c', 'd', 'e'].map(p => ({ peer: p, start: 0, end: 4, throughput: 10 })), { peer: 'liar', start: 4, end: 8, throughput: 1e9 }]
    const fixed = (): number => 0
    assert.equal(chooseStart(spans, 8, 4, fixed), 0, 'taken at its word, the liar draws new capacity away from its blocks')
    const capped = capThroughputs(spans, 10)
    assert.equal(capped[5].throughput, 40, 'at most 4 × the median (or own) figure')
    assert.equal(chooseStart(capped, 8, 4, fixed), 4, 'capped, its blocks are the weakest and get the new server')
  })
})
