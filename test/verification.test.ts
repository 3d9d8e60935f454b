// Verifiable inference on a loopback swarm of real processes: a cheating server among honest
// ones is caught by verifier peers, its wrong steps are rolled back and re-run, its reputation
// falls in the DHT and later routes avoid it; honest servers checked by a verifier on another
// backend raise no false alarm; forged fraud reports are refused.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, generate, seededRandom } from '@plexus/runtime'
import { getReputation } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { signFraudReport, verifyFraudReport, base64ToF32, f32ToBase64, encodeVerifyMessage } from '@plexus/protocol'
import type { FraudReport } from '@plexus/protocol'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import type { AuditEvent } from '@plexus/client'
import { SwarmVerifiers } from '@plexus/client'
import { ReputationView } from '@plexus/client'
import { VerifyClient } from '@plexus/client'
import { createGateway } from '@plexus/gateway'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { tamper } from './support/records.ts'
import { captureLog } from './support/log-capture.ts'

const MAX_TOKENS = 12

describe('verifiable inference on a loopback swarm', function () {
  this.timeout(240_000)
  let dir: string
  let model: string
  let swarm: LocalSwarm
  let node: PlexusNode
  let cheater: NodeProcess
  let honest: NodeProcess[]
  let verifiers: NodeProcess[]
  const prompts: number[][] = []
  const references: number[][] = []
  let fraudReport: Uint8Array | undefined

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-verify-'))
    model = join(dir, 'tiny6')
    await makeModel({ shape: 'tiny', layers: 6, out: model, seed: 31, name: 'tiny6' })
    await initBackend('wasm')
    const rand = seededRandom(5)
    for (let i = 0; i < 6; i++) prompts.push(Array.from({ length: 4 + i * 3 }, () => 3 + Math.floor(rand() * 500)))
    const local = await openLocal(model)
    try {
      for (const p of prompts) references.push((await generate(local.head, await local.session(p.length + MAX_TOKENS), p, { maxTokens: MAX_TOKENS })).tokenIds)
    } finally { await local.close() }
    swarm = await startSwarm(model, [])
    // the cheater perturbs every output by 5% of its RMS: small enough to keep tokens plausible
    // the honest holder of blocks 0–2 joins later (in the first test), so that the first route
    // has to go through the cheater
    ;[honest, cheater, verifiers] = await Promise.all([
      // two holders of blocks 3–5: a transient failure there is repaired, not fatal
      Promise.all([swarm.add('honest[3:6]', model, '3:6'), swarm.add('spare[3:6]', model, '3:6')]),
      swarm.add('cheater[0:3]', model, '0:3', ['--fault-perturb', '1,0.05']),
      // one verifier on another backend than the servers (cpu vs wasm), one on the same
      Promise.all([swarm.add('verifier-cpu', model, undefined, ['--verify', '--backend', 'cpu']), swarm.add('verifier-wasm', model, undefined, ['--verify'])])
    ])
    node = await connectSwarm([swarm.bootstrapAddr])
  })

  after(async () => {
    await node?.stop()
    await swarm?.stop()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  /** A swarm client whose first routes must go through `through` (for blocks 0–2) until it is banned. */
  async function client (opts: { checkRate: number, checkEvery?: number, trusted?: string[], events: AuditEvent[], dtype?: 'f32' | 'f16' }): Promise<OpenModel> {
    return await openSwarm(node, {
      dir: model, trust: 'verified', checkRate: opts.checkRate, checkEvery: opts.checkEvery, trustedVerifiers: opts.trusted, onAudit: e => { opts.events.push(e) }, dtype: opts.dtype
    })
  }
  /** What the clients logged (routes, failures, rollbacks): shown when a test fails. */
  const clientLog: string[] = []
  let stopClientLog = (): void => {}
  beforeEach(() => { stopClientLog = captureLog(clientLog) })
  afterEach(function () {
    stopClientLog()
    if (this.currentTest?.state === 'failed') console.log(`      client log:\n${clientLog.slice(-40).map(l => `        ${l}`).join('\n')}`)
    clientLog.length = 0
  })

  it('a verifier peer announces itself apart from servers (never routed through)', async () => {
    const found = await new SwarmVerifiers({ node }, { modelId: cheater.ready.modelId, numBlocks: 6 }).verifiers({ refresh: true })
    assert.deepEqual(found.map(v => v.peer).sort(), verifiers.map(v => v.peerId).sort())
    assert.ok(found.every(v => v.start === 0 && v.end === 6))
  })

  it('catches the cheater, rolls back, re-runs elsewhere: the delivered tokens equal the honest output', async () => {
    const events: AuditEvent[] = []
    const m = await client({ checkRate: 1, checkEvery: 2, events })
    try {
      // the cheater is the only holder of blocks 0–2 when the session opens
      const session = await m.session(prompts[0].length + MAX_TOKENS)
      assert.equal(session.route![0].peer, cheater.peerId, 'the first route goes through the cheater')
      honest.unshift(await swarm.add('honest[0:3]', model, '0:3'))
      const delivered: number[] = []
      const r = await generate(m.head, session, prompts[0], { maxTokens: MAX_TOKENS, onToken: id => { delivered.push(id) } })
      const finalRoute = session.route!.map(h => h.peer)
      await session.close()
      assert.deepEqual(r.tokenIds, references[0])
      assert.deepEqual(delivered, references[0], 'only confirmed tokens are delivered, each once')
      const frauds = events.filter(e => e.kind === 'fraud')
      assert.equal(frauds.length, 1, JSON.stringify(events.map(e => e.kind)))
      const f = frauds[0] as Extract<AuditEvent, { kind: 'fraud' }>
      assert.equal(f.server, cheater.peerId)
      assert.equal(f.confirmedBy.length, 2, 'the second verifier re-checked and confirmed the report')
      assert.ok(!finalRoute.includes(cheater.peerId))
      fraudReport = f.report
    } finally { await m.close() }
  })

  it("the cheater's reputation falls in the DHT, and a fresh client's routes avoid it", async () => {
    const modelId = cheater.ready.modelId
    // both verifiers publish a failed check (one found it, the other confirmed it on re-check)
    const until = Date.now() + 20_000
    for (;;) {
      const records = await Promise.all(verifiers.map(async v => await getReputation(node, cheater.peerId, v.peerId, { timeoutMs: 3000 })))
      if (records.every(r => r != null && r.failed > 0)) break
      if (Date.now() > until) throw new Error(`reputation records not published: ${JSON.stringify(records.map(r => r == null ? null : { failed: r.failed, passed: r.passed }))}`)
      await new Promise(resolve => setTimeout(resolve, 500))
    }
    const view = new ReputationView({ node, verifiers: new SwarmVerifiers({ node }, { modelId, numBlocks: 6 }) }, { modelId })
    assert.deepEqual([...await view.distrusted([cheater.peerId, honest[0].peerId, honest[1].peerId])], [cheater.peerId])
    // a client that knows nothing of the earlier session: reputation alone keeps it away
    const events: AuditEvent[] = []
    const m = await client({ checkRate: 1, events })
    try {
      for (let i = 0; i < 4; i++) {
        const s = await m.session(prompts[1].length + MAX_TOKENS)
        try {
          assert.ok(!s.route!.some(h => h.peer === cheater.peerId), 'a fresh route avoids the low-reputation server')
          assert.deepEqual((await generate(m.head, s, prompts[1], { maxTokens: MAX_TOKENS })).tokenIds, references[1])
        } finally { await s.close() }
      }
      assert.equal(events.filter(e => e.kind === 'fraud').length, 0)
    } finally { await m.close() }
  })

  it('no false alarms: 1,000 honest spot checks (wasm servers, cpu and wasm verifiers, f32 and f16 wire) raise no fraud report', async () => {
    const events: AuditEvent[] = []
    let sessions = 0
    for (const dtype of ['f32', 'f16'] as const) {
      const m = await client({ checkRate: 1, checkEvery: 1, events, dtype })
      try {
        for (let round = 0; events.filter(e => e.kind === 'checked').length < (dtype === 'f32' ? 600 : 1000); round++) {
          const i = round % prompts.length
          const s = await m.session(prompts[i].length + MAX_TOKENS)
          try {
            assert.ok(!s.route!.some(h => h.peer === cheater.peerId))
            assert.deepEqual((await generate(m.head, s, prompts[i], { maxTokens: MAX_TOKENS })).tokenIds, references[i])
            sessions++
          } finally { await s.close() }
        }
      } finally { await m.close() }
    }
    const checks = events.filter((e): e is Extract<AuditEvent, { kind: 'checked' }> => e.kind === 'checked')
    const cpu = checks.filter(e => e.verifier === verifiers[0].peerId).length
    const maxError = Math.max(...checks.map(e => e.maxError))
    console.log(`      ${checks.length} checks in ${sessions} sessions (${cpu} by the cpu verifier), max honest error ${maxError.toExponential(2)} (tolerance 0.02)`)
    assert.ok(checks.length >= 1000)
    assert.ok(cpu >= 200, `the cpu verifier made ${cpu} checks`)
    assert.equal(events.filter(e => e.kind === 'fraud').length, 0)
    // the honest servers' records show only passes
    for (const v of verifiers) {
      for (const h of honest) {
        const r = await getReputation(node, h.peerId, v.peerId, { timeoutMs: 5000 })
        if (r != null) assert.equal(r.failed, 0)
      }
    }
  })

  it('forged fraud reports are refused: altered, misattributed, and a lie about an honest output', async () => {
    assert.ok(fraudReport != null, 'the cheater test produced a report')
    const real = await verifyFraudReport(fraudReport)
    assert.equal(real.report.server, cheater.peerId)
    // altered after signing
    const altered = tamper(fraudReport, p => p.replace(`"badStep":${real.report.badStep}`, `"badStep":${real.report.badStep + 1}`))
    await assert.rejects(verifyFraudReport(altered), /signature does not verify/)
    // re-signed by a liar, blaming the honest server for the cheater's commitments
    const liar = await generateKeyPair('Ed25519')
    const body = (r: FraudReport): any => { const { kind, peer, issuedAt, expiresAt, ...rest } = r; void kind; void peer; void issuedAt; void expiresAt; return rest }
    const misattributed = await signFraudReport(liar, { ...body(real.report), server: honest[0].peerId })
    await assert.rejects(verifyFraudReport(misattributed), /signed by .* but came from|commitment/)
    // a liar claims the output was something the server never returned
    const out = base64ToF32(real.report.output)
    out[0] += 1
    const wrongOutput = await signFraudReport(liar, { ...body(real.report), output: f32ToBase64(out) })
    await assert.rejects(verifyFraudReport(wrongOutput), /output is not the one the server committed to/)

    // a liar wraps an honest session's genuine evidence as a "fraud report": the signatures and
    // digests hold, but every verifier's re-computation clears the server
    const honestReport = await honestEvidence(liar)
    await verifyFraudReport(honestReport)
    for (const v of verifiers) {
      const c = await VerifyClient.open(node, v.peerId, peerIdFromString(v.peerId))
      try {
        const r = await c.recheck(honestReport)
        assert.equal(r.confirmed, false, r.reason)
        assert.match(r.reason, /within the tolerance/)
        const genuine = await c.recheck(fraudReport)
        assert.equal(genuine.confirmed, true, genuine.reason)
      } finally { await c.close() }
    }
  })

  it('the verify protocol refuses bad input with a named error and keeps serving', async () => {
    const target = peerIdFromString(verifiers[1].peerId)
    const exchange = async (frame: Uint8Array): Promise<any> => {
      const stream = await node.dialProtocol(target, '/plexus/verify/1.0.0', { signal: AbortSignal.timeout(5000) })
      const io = lpStream(stream)
      await io.write(frame, { signal: AbortSignal.timeout(5000) })
      const reply = (await io.read({ signal: AbortSignal.timeout(5000) })).subarray()
      const hl = new DataView(reply.buffer, reply.byteOffset).getUint32(0)
      return JSON.parse(new TextDecoder().decode(reply.subarray(4, 4 + hl)))
    }
    const garbage = await exchange(new Uint8Array([0, 0, 0, 9, 1, 2, 3]))
    assert.deepEqual([garbage.type, garbage.code], ['error', 'bad-frame'])
    const unknown = await exchange(encodeVerifyMessage({ type: 'verdict', verifyId: '0'.repeat(32), ok: true, length: 0, maxError: 0, tolerance: 1 }))
    assert.equal(unknown.code, 'bad-request')
    // a check whose commitment another peer signed
    const report = await verifyFraudReport(fraudReport!)
    const forged = await exchange(encodeVerifyMessage({
      type: 'check', verifyId: '1'.repeat(32), server: honest[0].peerId, modelId: report.report.modelId, start: report.report.start, end: report.report.end,
      sessionId: report.report.sessionId, hidden: report.report.hidden, maxLength: 64, commitments: [report.report.commitments[0]], inputs: report.inputs[0], outputs: report.inputs[0]
    }))
    assert.equal(forged.code, 'bad-commitment')
    assert.match(forged.message, /signed by/)
    // and an honest session is still verified
    const events: AuditEvent[] = []
    const m = await client({ checkRate: 1, events })
    try {
      const s = await m.session(prompts[2].length + MAX_TOKENS)
      try { assert.deepEqual((await generate(m.head, s, prompts[2], { maxTokens: MAX_TOKENS })).tokenIds, references[2]) } finally { await s.close() }
      assert.ok(events.some(e => e.kind === 'checked'))
    } finally { await m.close() }
  })

  it('the gateway honours X-Plexus-Trust: verified (checked, honest text even with the cheater in the swarm)', async () => {
    const events: AuditEvent[] = []
    const m = await openSwarm(node, { dir: model, checkRate: 1, onAudit: e => { events.push(e) } })
    const gw = await createGateway({ model: m })
    try {
      const base = await gw.listen(0)
      const ask = async (trust: string): Promise<{ status: number, json: any }> => {
        const r = await fetch(`${base}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-plexus-trust': trust },
          body: JSON.stringify({ model: gw.modelName, prompt: prompts[4], max_tokens: MAX_TOKENS, temperature: 0 })
        })
        return { status: r.status, json: await r.json() }
      }
      const fast = await ask('fast')
      assert.equal(fast.status, 200)
      assert.equal(events.length, 0, 'fast runs no checks')
      const verified = await ask('verified')
      assert.equal(verified.status, 200, JSON.stringify(verified.json))
      // fast may have gone through the cheater; verified delivers the honest text
      assert.equal(verified.json.choices[0].text, m.tokenizer!.decode(references[4], { skipSpecialTokens: true }))
      assert.ok(events.some(e => e.kind === 'checked'), 'verified ran checks')
      const attested = await ask('attested')
      assert.equal(attested.status, 501)
    } finally {
      await gw.close()
      await m.close()
    }
  })

  /** A genuine honest session's evidence, signed by `liar` as if it were fraud. */
  async function honestEvidence (liar: Awaited<ReturnType<typeof generateKeyPair>>): Promise<Uint8Array> {
    const { RemoteSpanSession } = await import('@plexus/client')
    const m = await openLocal(model)
    try {
      const s = await RemoteSpanSession.open(node, { peer: honest[0].peerId, target: peerIdFromString(honest[0].peerId), modelId: honest[0].ready.modelId, start: 0, end: 3, maxLength: 32, hiddenSize: m.config.hiddenSize })
      try {
        const input = m.head.embed(prompts[3])
        const output = await s.forward(input, prompts[3].length)
        return await signFraudReport(liar, {
          server: honest[0].peerId,
          modelId: honest[0].ready.modelId,
          start: 0,
          end: 3,
          sessionId: s.sessionId,
          hidden: m.config.hiddenSize,
          badStep: 0,
          error: 1,
          tolerance: 0.02,
          commitments: [s.lastStep!.commitment],
          inputs: [f32ToBase64(input)],
          output: f32ToBase64(output)
        })
      } finally { await s.close() }
    } finally { await m.close() }
  }
})
