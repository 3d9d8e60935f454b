// Verifier peers and reputation under attack, on a loopback swarm of real processes: a flood of
// re-checks of one 1.4 MB fraud report (and of many distinct ones), checks and reports signed by
// throwaway keys for made-up servers, and two self-announced "verifiers" publishing failures of
// an honest server without evidence. Each hostile input gets a named error or is ignored; an
// honest verified session on the same verifiers gets the same tokens as a local run; the
// verifier's RSS stays within a stated bound of its baseline.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { initBackend, generate, seededRandom, openModel, loadSpanRunners, chainRunners } from '@plexus/runtime'
import { Announcer, serveInfo, signAnnouncement, signReputation, putReputation, getReputation, createPlexusNode, dialBootstrap, waitForDhtPeers } from '@plexus/p2p'
import type { PlexusNode, PrivateKey } from '@plexus/p2p'
import { signCommitment, signFraudReport, tensorDigest, verifyFraudReport, f32ToBase64 } from '@plexus/protocol'
import type { FraudReport } from '@plexus/protocol'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import { RemoteSpanSession } from '@plexus/client'
import { VerifyClient } from '@plexus/client'
import { SwarmVerifiers } from '@plexus/client'
import { ReputationView } from '@plexus/client'
import type { AuditEvent } from '@plexus/client'
import { Verifier } from '@plexus/server'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { captureLog } from './support/log-capture.ts'

const MAX_TOKENS = 10
/** The verifier's RSS may grow by this much over its baseline across every attack (MiB). */
const RSS_BOUND_MIB = 160
/** Positions of the big fraud report (inputs and output of a 512-wide model: ≈ 1.4 MB). */
const REPORT_POSITIONS = 256

function rssMiB (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  assert.ok(m != null)
  return Number(m[1]) / 1024
}
const bodyOf = (r: FraudReport): any => { const { kind, peer, issuedAt, expiresAt, ...rest } = r; void kind; void peer; void issuedAt; void expiresAt; return rest }

describe('hardening: verifiers and reputation under attack', function () {
  this.timeout(300_000)
  let dir: string
  let model: string
  let swarm: LocalSwarm
  let node: PlexusNode
  let cheater: NodeProcess
  let honest: NodeProcess[]
  let verifiers: NodeProcess[]
  let modelId: string
  let baseline: number
  let bigReport: Uint8Array
  const prompt: number[] = []
  let reference: number[]
  const fakes: PlexusNode[] = []

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-hardening-verify-'))
    model = join(dir, 'tiny3')
    // 512 wide: a 1.4 MB report is 256 positions (a 64-wide model would need 2,000, slow to re-compute on a busy machine)
    await makeModel({ shape: { hiddenSize: 512, numLayers: 3, numHeads: 8, numKvHeads: 4, intermediateSize: 1024, vocabSize: 512 }, out: model, seed: 31, name: 'tiny3' })
    await initBackend('wasm')
    const rand = seededRandom(9)
    for (let i = 0; i < 8; i++) prompt.push(3 + Math.floor(rand() * 500))
    const local = await openLocal(model)
    try { reference = (await generate(local.head, await local.session(prompt.length + MAX_TOKENS), prompt, { maxTokens: MAX_TOKENS })).tokenIds } finally { await local.close() }
    swarm = await startSwarm(model, [])
    // one at a time: parallel starts on a busy machine overrun the bootstrap dial's deadline
    honest = [await swarm.add('honest[0:3]', model, '0:3')]
    cheater = await swarm.add('cheater[0:3]', model, '0:3', ['--fault-perturb', '1,0.05'])
    verifiers = [await swarm.add('verifier-a', model, undefined, ['--verify', '--max-rechecks', '2', '--log-level', 'debug']), await swarm.add('verifier-b', model, undefined, ['--verify'])]
    modelId = cheater.ready.modelId
    node = await connectSwarm([swarm.bootstrapAddr])
  })

  after(async () => {
    await Promise.all(fakes.map(async n => { await n.stop() }))
    await node?.stop()
    await swarm?.stop()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(`      verifier-a stderr:\n${verifiers?.[0]?.stderr().split('\n').filter(l => /verif|recheck|error/i.test(l)).slice(-30).join('\n')}`)
  })

  function checkRss (attack: string): void {
    const now = rssMiB(verifiers[0].child.pid!)
    console.log(`      verifier RSS after ${attack}: ${now.toFixed(0)} MiB (baseline ${baseline.toFixed(0)} MiB, bound +${RSS_BOUND_MIB} MiB)`)
    assert.ok(now <= baseline + RSS_BOUND_MIB, `verifier RSS ${now.toFixed(0)} MiB after ${attack} exceeds ${baseline.toFixed(0)} + ${RSS_BOUND_MIB} MiB`)
  }

  /** An honest verified session (every hop checked) still gets the local tokens. */
  async function honestSession (): Promise<void> {
    const events: AuditEvent[] = []
    const m = await openSwarm(node, { dir: model, trust: 'verified', checkRate: 1, onAudit: e => { events.push(e) } })
    try {
      const s = await m.session(prompt.length + MAX_TOKENS)
      try { assert.deepEqual((await generate(m.head, s, prompt, { maxTokens: MAX_TOKENS })).tokenIds, reference) } finally { await s.close() }
      assert.ok(events.some(e => e.kind === 'checked'), 'the session was checked')
    } finally { await m.close() }
  }

  /** A node of the attacker's (one connection each: a flood of large frames on one connection can get it closed by the ping monitor). */
  async function attacker (): Promise<PlexusNode> {
    const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: ['/ip4/127.0.0.1/tcp/0'] })
    fakes.push(n)
    await dialBootstrap(n, [swarm.bootstrapAddr], { timeoutMs: 10_000 })
    return n
  }
  const verifyClient = async (v: NodeProcess, from: PlexusNode = node): Promise<VerifyClient> => await VerifyClient.open(from, v.peerId, peerIdFromString(v.peerId))
  /** The verifier's answer to a recheck, or the code of its refusal ('transport: …' when the attacker's own stream failed). */
  async function recheck (v: NodeProcess, report: Uint8Array, from: PlexusNode = node): Promise<{ confirmed?: boolean, error?: number, refused?: string }> {
    let c: VerifyClient
    try { c = await verifyClient(v, from) } catch (err: any) { return { refused: `transport: ${String(err.message)}` } }
    try {
      const r = await c.recheck(report)
      return { confirmed: r.confirmed, error: r.error }
    } catch (err: any) {
      const m = /verifier refused: ([a-z-]+):/.exec(String(err.message))
      return { refused: m?.[1] ?? `transport: ${String(err.message)}` }
    } finally { await c.close() }
  }

  it(`a real fraud report of ${REPORT_POSITIONS} positions from the cheater (≈ 1.4 MB)`, async () => {
    const local = await openLocal(model)
    try {
      const s = await RemoteSpanSession.open(node, { peer: cheater.peerId, target: peerIdFromString(cheater.peerId), modelId, start: 0, end: 3, maxLength: REPORT_POSITIONS, hiddenSize: local.config.hiddenSize })
      const ids = Array.from({ length: REPORT_POSITIONS }, (_, i) => 3 + (i * 37) % 500)
      try {
        const input = local.head.embed(ids)
        const output = await s.forward(input, ids.length)
        const c = await verifyClient(verifiers[0])
        try {
          const verdict = await c.check({ verifyId: randomBytes(16).toString('hex'), server: cheater.peerId, modelId, start: 0, end: 3, sessionId: s.sessionId, hidden: local.config.hiddenSize, maxLength: REPORT_POSITIONS, commitments: [s.lastStep!.commitment], inputs: input, outputs: output })
          assert.equal(verdict.ok, false)
          bigReport = new TextEncoder().encode(verdict.report!)
        } finally { await c.close() }
      } finally { await s.close() }
    } finally { await local.close() }
    // the baseline: after one honest check of this size (its prefill sizes the verifier's heaps)
    baseline = rssMiB(verifiers[0].child.pid!)
    console.log(`      fraud report: ${(bigReport.length / 1e6).toFixed(2)} MB; verifier RSS after checking it ${baseline.toFixed(0)} MiB`)
    assert.ok(bigReport.length > 1.2e6)
    await verifyFraudReport(bigReport)
  })

  it('16 concurrent rechecks of one report share one computation; a flood of distinct reports is bounded (busy)', async () => {
    const attackers = await Promise.all(Array.from({ length: 8 }, async () => await attacker()))
    const same = await Promise.all(Array.from({ length: 16 }, async (_, i) => await recheck(verifiers[0], bigReport, attackers[i % 8])))
    const answered = same.filter(r => r.refused?.startsWith('transport') !== true)
    // 40 distinct reports at once: the same evidence, each re-signed by another throwaway key
    const real = await verifyFraudReport(bigReport)
    const distinct = await Promise.all(Array.from({ length: 40 }, async () => await signFraudReport(await generateKeyPair('Ed25519'), bodyOf(real.report))))
    const flood = await Promise.all(distinct.map(async (r, i) => await recheck(verifiers[0], r, attackers[i % 8])))
    const confirmed = flood.filter(r => r.confirmed === true).length
    const busy = flood.filter(r => r.refused === 'busy').length
    const transport = flood.filter(r => r.refused?.startsWith('transport') === true).length
    console.log(`      16 identical rechecks: ${answered.length} answered (alike), ${16 - answered.length} lost in transport; 40 distinct 1.4 MB reports at once: ${confirmed} re-computed, ${busy} refused busy (2 at a time, 8 more admitted), ${transport} lost in transport`)
    const lost = new Set([...same, ...flood].filter(r => r.refused?.startsWith('transport') === true).map(r => r.refused!.slice(0, 160)))
    if (lost.size > 0) console.log(`      lost in transport: ${[...lost].join(' | ')}`)
    assert.ok(answered.every(r => r.confirmed === true && r.error === answered[0].error), JSON.stringify(same))
    assert.equal(confirmed + busy + transport, 40, JSON.stringify(flood.filter(r => r.confirmed !== true && r.refused !== 'busy' && r.refused?.startsWith('transport') !== true)))
    // once computed, the report is answered from the verifier's cache
    assert.equal((await recheck(verifiers[0], bigReport)).confirmed, true)
    checkRss('56 rechecks')
    await honestSession()
  })

  it('the admission bound, without a network in between: of 40 distinct reports at once, 10 are admitted and 30 refused busy', async () => {
    // the same Verifier a verifier node runs, on this process's own span workers
    const source = await openModel(model)
    const runner = chainRunners(await loadSpanRunners(source, 0, 3, { placement: 'workers' }))
    const verifier = new Verifier({ runner, config: source.config, privateKey: await generateKeyPair('Ed25519'), log: Object.assign(() => {}, { error: () => {}, trace: () => {}, enabled: false }) as any }, {
      modelId, maxRechecks: 2, maxQueuedRechecks: 8, servers: { announces: async (peer) => peer === cheater.peerId }
    })
    try {
      const real = await verifyFraudReport(bigReport)
      const distinct = await Promise.all(Array.from({ length: 40 }, async () => await signFraudReport(await generateKeyPair('Ed25519'), bodyOf(real.report))))
      const answers = await Promise.all(distinct.map(async r => await verifier.recheck(r).then(x => x.confirmed ? 'confirmed' : 'cleared', (e: any) => e.code as string)))
      assert.deepEqual([answers.filter(a => a === 'confirmed').length, answers.filter(a => a === 'busy').length], [10, 30], answers.join(','))
      // identical ones share one computation and its answer; afterwards it is kept
      const same = await Promise.all(Array.from({ length: 16 }, async () => await verifier.recheck(bigReport)))
      assert.ok(same.every(r => r.confirmed && r.error === same[0].error))
      assert.equal(verifier.tally(cheater.peerId).failed, 11, 'each distinct confirmed report counted once')
    } finally {
      await verifier.dispose()
      await runner.dispose()
      await source.close?.()
    }
  })

  it('checks and reports signed by a throwaway key for a made-up server are refused (unknown-server); no reputation is published about it', async () => {
    const fake: PrivateKey = await generateKeyPair('Ed25519')
    const fakeId = peerIdFromPrivateKey(fake).toString()
    const hidden = 512
    const input = new Float32Array(4 * hidden).map((_, i) => Math.sin(i))
    const output = new Float32Array(4 * hidden).map((_, i) => Math.cos(i) * 100)
    const sessionId = randomBytes(16).toString('hex')
    const commitment = await signCommitment(fake, { modelId, start: 0, end: 3, sessionId, step: 0, position: 0, tokens: 4, inputDigest: await tensorDigest(input), outputDigest: await tensorDigest(output) })
    const c = await verifyClient(verifiers[0])
    await assert.rejects(c.check({ verifyId: randomBytes(16).toString('hex'), server: fakeId, modelId, start: 0, end: 3, sessionId, hidden, maxLength: 16, commitments: [commitment], inputs: input, outputs: output }),
      /verifier refused: unknown-server: peer .* does not announce blocks \[0, 3\)/)
    await c.close()
    const report = await signFraudReport(await generateKeyPair('Ed25519'), {
      server: fakeId, modelId, start: 0, end: 3, sessionId, hidden, badStep: 0, error: 1, tolerance: 0.02, commitments: [commitment], inputs: [f32ToBase64(input)], output: f32ToBase64(output)
    })
    for (const v of verifiers) assert.deepEqual(await recheck(v, report), { refused: 'unknown-server' })
    // the verifier publishes within 2 s of a change: nothing comes about the made-up server
    await new Promise(resolve => setTimeout(resolve, 3000))
    for (const v of verifiers) assert.equal(await getReputation(node, fakeId, v.peerId, { timeoutMs: 3000 }), undefined)
    checkRss('throwaway-key checks')
    await honestSession()
  })

  it('two self-announced verifiers publishing failures of an honest server without evidence do not remove it; a proven cheater is', async () => {
    const victim = honest[0].peerId
    const claimants: PlexusNode[] = []
    for (let i = 0; i < 2; i++) {
      const privateKey = await generateKeyPair('Ed25519')
      const n = await createPlexusNode({ privateKey, dhtMode: 'server', listen: ['/ip4/127.0.0.1/tcp/0'] })
      fakes.push(n)
      claimants.push(n)
      await dialBootstrap(n, [swarm.bootstrapAddr], { timeoutMs: 5000 })
      await waitForDhtPeers(n, { minPeers: 1, signal: AbortSignal.timeout(10_000) })
      await serveInfo(n, async () => [await signAnnouncement(privateKey, {
        modelId, modelName: 'tiny3', start: 0, end: 3, numBlocks: 3, throughput: 1, addrs: n.getMultiaddrs().map(a => a.toString()), offersHead: false, capacity: { sessions: 1, freeSessions: 1 }, version: '0', role: 'verifier'
      }, { ttlMs: 60_000 })])
      const announcer = new Announcer({ node: n }, { modelId, start: 0, end: 3, role: 'verifier' })
      await announcer.start()
      const now = Date.now()
      const claim = await signReputation(privateKey, { subject: victim, modelId, passed: 0, failed: 3, reports: [randomBytes(32).toString('hex')], seq: now }, { now })
      assert.ok(await putReputation(n, claim, { timeoutMs: 10_000 }) > 0)
    }
    const source = new SwarmVerifiers({ node }, { modelId, numBlocks: 3 })
    const until0 = Date.now() + 60_000
    for (;;) {
      const found = (await source.verifiers({ refresh: true })).map(v => v.peer)
      if (claimants.every(f => found.includes(f.peerId.toString()))) break
      if (Date.now() > until0) throw new Error(`the fake verifiers are not discoverable (found ${found.join(', ')})`)
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
    const log: string[] = []
    const stop = captureLog(log)
    try {
      const view = new ReputationView({ node, verifiers: source }, { modelId, lookupTimeoutMs: 10_000 })
      const claims = (await view.records(victim)).filter(r => r.failed > 0)
      assert.equal(claims.length, 2, 'both claims are in the DHT')
      // the cheater's record from verifier-a names the big report; verifier-b re-computes it
      const until = Date.now() + 20_000
      while ((await getReputation(node, cheater.peerId, verifiers[0].peerId, { timeoutMs: 3000 }))?.failed == null) {
        if (Date.now() > until) throw new Error('verifier-a published no record of the cheater')
        await new Promise(resolve => setTimeout(resolve, 500))
      }
      const distrusted = await view.distrusted([victim, cheater.peerId])
      assert.deepEqual([...distrusted], [cheater.peerId], log.join('\n'))
      assert.ok(log.some(l => /not counted: .*does not hand it out|cannot open a verify stream/.test(l)), log.join('\n'))
    } finally { stop() }
    // a verified client's routes still use the honest server (the cheater, now proven, is avoided)
    const m = await openSwarm(node, { dir: model, trust: 'verified', checkRate: 1 })
    try {
      const s = await m.session(prompt.length + MAX_TOKENS)
      try {
        assert.ok(!s.route!.some(h => h.peer === cheater.peerId))
        assert.equal(s.route![0].peer, victim)
        assert.deepEqual((await generate(m.head, s, prompt, { maxTokens: MAX_TOKENS })).tokenIds, reference)
      } finally { await s.close() }
    } finally { await m.close() }
    checkRss('fake verifiers')
  })
})
