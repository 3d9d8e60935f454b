// Budgets of a server under attack, on a loopback swarm of real processes (a bootstrap peer and
// one plexus-node serving both blocks of a 4,096-position model, with small limits given by
// flags). A hostile peer fills its per-peer session and KV caps and is refused `busy` naming the
// per-peer limit, while another peer still opens sessions and generates the local run's tokens;
// a 2,048-token prefill runs in chunks, with the server's RSS within a stated bound and the
// local floats; a step over --max-step-tokens is refused `too-long` and the node keeps serving;
// a session kept "alive" only by truncates is closed after --session-idle-timeout. The session
// lifetime is checked on a BlockBackend in this process (a 1 h default is too long to wait for).
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { initBackend, generate, seededRandom, Checkpoint, Span, ModelHead, inProcessRunner } from '@plexus/runtime'
import type { PlexusNode } from '@plexus/p2p'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import { RemoteSpanSession, RemoteError } from '@plexus/client'
import { BlockBackend } from '@plexus/server'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { fixtureDir, maxAbsDiff } from './support/fixtures.ts'

const MAX_TOKENS = 8
const PER_PEER_SESSIONS = 3
/** --cache-mb 16 with the default share 0.5: one peer may reserve 8 MiB, two 3,072-position sessions here (3 MiB each). */
const CACHE_MB = 16
const MAX_STEP = 2048
const CHUNK = 128
const IDLE_S = 4
/** The server's RSS may grow by this much over its baseline during a 2,048-token prefill (MiB): chunked it grew by 70, unchunked (--max-chunk-tokens 4096) by 892. */
const RSS_BOUND_MIB = 96
const TOL = 1e-4

function rssMiB (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  assert.ok(m != null)
  return Number(m[1]) / 1024
}
/** The refusal a promise ends with (code and message), or a failure if it succeeded. */
async function refusal (p: Promise<unknown>): Promise<RemoteError> {
  try { await p } catch (err) { if (err instanceof RemoteError) return err; throw err }
  assert.fail('expected a refusal')
}
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('hardening: per-peer, per-step and per-session budgets', function () {
  this.timeout(300_000)
  let dir: string
  let model: string
  let swarm: LocalSwarm
  let server: NodeProcess
  let hostile: PlexusNode
  let honest: PlexusNode
  let modelId: string
  let H: number
  const prompt: number[] = []
  let reference: number[]
  let local: Awaited<ReturnType<typeof openLocal>>

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-hardening-budgets-'))
    model = join(dir, 'tiny-long')
    await makeModel({ shape: { hiddenSize: 128, numLayers: 2, numHeads: 8, numKvHeads: 4, intermediateSize: 256, vocabSize: 512, maxPositions: 4096 }, out: model, seed: 17, name: 'tiny-long' })
    await initBackend('wasm')
    const rand = seededRandom(4)
    for (let i = 0; i < 8; i++) prompt.push(3 + Math.floor(rand() * 500))
    local = await openLocal(model)
    H = local.config.hiddenSize
    reference = (await generate(local.head, await local.session(prompt.length + MAX_TOKENS), prompt, { maxTokens: MAX_TOKENS })).tokenIds
    swarm = await startSwarm(model, [])
    server = await swarm.add('server[0:2]', model, '0:2', [
      '--max-sessions-per-peer', String(PER_PEER_SESSIONS), '--cache-mb', String(CACHE_MB), '--memory', '1024',
      '--max-step-tokens', String(MAX_STEP), '--max-chunk-tokens', String(CHUNK), '--session-idle-timeout', String(IDLE_S)
    ])
    modelId = server.ready.modelId
    hostile = await connectSwarm([swarm.bootstrapAddr])
    honest = await connectSwarm([swarm.bootstrapAddr])
  })

  after(async () => {
    await hostile?.stop()
    await honest?.stop()
    await swarm?.stop()
    await local?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(`      server stderr:\n${server?.stderr().split('\n').slice(-30).join('\n')}`)
  })

  const open = async (from: PlexusNode, maxLength: number): Promise<RemoteSpanSession> =>
    await RemoteSpanSession.open(from, { peer: server.peerId, target: peerIdFromString(server.peerId), modelId, start: 0, end: 2, maxLength, hiddenSize: H, stepTimeoutMs: 120_000 })

  /** The honest peer generates through the swarm and gets the local run's tokens. */
  async function honestGenerates (): Promise<void> {
    const m = await openSwarm(honest, { dir: model })
    try {
      const s = await m.session(prompt.length + MAX_TOKENS)
      try { assert.deepEqual((await generate(m.head, s, prompt, { maxTokens: MAX_TOKENS })).tokenIds, reference) } finally { await s.close() }
    } finally { await m.close() }
  }

  it(`a peer gets ${PER_PEER_SESSIONS} sessions and half the KV budget, then busy naming the per-peer limit; another peer still generates`, async () => {
    const held: RemoteSpanSession[] = []
    // two 3,072-position sessions take 6 of this peer's 8 MiB; a third is over its KV share
    held.push(await open(hostile, 3072), await open(hostile, 3072))
    const kv = await refusal(open(hostile, 3072))
    assert.equal(kv.code, 'busy')
    assert.match(kv.message, /per-peer KV limit/)
    // a small one still fits its KV share; then the session count is the limit
    held.push(await open(hostile, 64))
    const count = await refusal(open(hostile, 64))
    assert.equal(count.code, 'busy')
    assert.match(count.message, /per-peer session limit: this peer holds 3 sessions here \(limit 3\)/)
    // keep the hostile sessions alive (steps refresh idle time) while the other peer generates
    let done = false
    const x = local.head.embed([7])
    const keepAlive = (async () => { while (!done) { for (const s of held) await s.forward(x, 1); await sleep(500) } })()
    try {
      await honestGenerates()
    } finally { done = true; await keepAlive }
    // the hostile sessions were held throughout: each still steps
    for (const s of held) await s.forward(x, 1)
    for (const s of held) await s.close()
  })

  it(`a ${MAX_STEP}-token prefill runs in chunks of ${CHUNK}: the local floats, RSS within +${RSS_BOUND_MIB} MiB`, async () => {
    // baseline after a warm step, so the first step's one-off allocations are not counted
    const warm = await open(honest, 16)
    await warm.forward(local.head.embed([1, 2, 3, 4]), 4)
    await warm.close()
    await sleep(500)
    const baseline = rssMiB(server.child.pid!)
    const ids = Array.from({ length: MAX_STEP }, (_, i) => 3 + (i * 37) % 500)
    const x = local.head.embed(ids)
    const s = await open(honest, MAX_STEP + 8)
    let peak = baseline
    const poll = setInterval(() => { peak = Math.max(peak, rssMiB(server.child.pid!)) }, 20)
    let out: Float32Array
    try { out = await s.forward(x, MAX_STEP) } finally { clearInterval(poll) }
    peak = Math.max(peak, rssMiB(server.child.pid!))
    console.log(`      server RSS during the ${MAX_STEP}-token step: peak ${peak.toFixed(0)} MiB (baseline ${baseline.toFixed(0)} MiB, bound +${RSS_BOUND_MIB} MiB)`)
    assert.ok(peak <= baseline + RSS_BOUND_MIB, `server RSS peaked at ${peak.toFixed(0)} MiB, over ${baseline.toFixed(0)} + ${RSS_BOUND_MIB} MiB`)
    // the floats of the whole step run here, and the same next token from the last row
    const ckpt = await Checkpoint.open(model)
    const span = await Span.load(ckpt, 0, 2)
    try {
      const want = await span.forward(x, MAX_STEP, span.newCache(MAX_STEP))
      const d = maxAbsDiff(out, want)
      assert.ok(d < TOL, `chunked on the server vs whole here: max abs diff ${d}`)
      const last = (a: Float32Array): Float32Array => a.subarray((MAX_STEP - 1) * H)
      const argmax = (l: Float32Array): number => l.reduce((b, v, i) => v > l[b] ? i : b, 0)
      assert.equal(argmax(await local.head.logits(last(out), 1)), argmax(await local.head.logits(last(want), 1)))
    } finally { span.dispose(); await ckpt.close(); await s.close() }
  })

  it(`a step of ${MAX_STEP + 52} tokens is refused too-long; the node keeps serving`, async () => {
    const s = await open(hostile, 4096)
    const T = MAX_STEP + 52
    const err = await refusal(s.forward(new Float32Array(T * H).fill(0.01), T))
    assert.equal(err.code, 'too-long')
    assert.match(err.message, new RegExp(`step of ${T} tokens exceeds the limit of ${MAX_STEP} tokens per step`))
    await s.close()
    await honestGenerates()
  })

  it(`a session sent only truncates is closed after ${IDLE_S} s without a step`, async () => {
    const s = await open(honest, 64)
    await s.forward(local.head.embed([1, 2, 3]), 3)
    const t0 = Date.now()
    let closed: RemoteError | undefined
    while (closed == null && Date.now() - t0 < (IDLE_S + 6) * 1000) {
      await sleep(500)
      try { await s.truncate(3) } catch (err) { if (!(err instanceof RemoteError)) throw err; closed = err }
    }
    const after = (Date.now() - t0) / 1000
    assert.ok(closed != null, `the session was still open after ${after.toFixed(1)} s of truncates`)
    assert.equal(closed.code, 'closed-session')
    assert.match(closed.message, new RegExp(`no step for ${IDLE_S} s`))
    assert.ok(after >= IDLE_S, `closed after ${after.toFixed(1)} s, before the idle timeout`)
    console.log(`      closed ${after.toFixed(1)} s after its last step (idle timeout ${IDLE_S} s)`)
    await s.close()
    await honestGenerates()
  })

  it('a session is closed at its lifetime however busy (BlockBackend, tiny-llama)', async () => {
    const ckpt = await Checkpoint.open(fixtureDir('tiny-llama'))
    const head = await ModelHead.load(ckpt)
    const span = await Span.load(ckpt, 0, ckpt.config.numLayers)
    const b = new BlockBackend({ runner: inProcessRunner(span), config: ckpt.config }, { modelId: 'm', maxLifetimeMs: 800, idleTimeoutMs: 60_000 })
    try {
      await b.open('s', 'm', 0, ckpt.config.numLayers, 64, 'peer-a')
      const t0 = Date.now()
      let err: any
      for (let i = 0; i < 60 && err == null; i++) {
        try { await b.step('s', i, 1, head.embed([3 + i])) } catch (e) { err = e }
        await sleep(50)
      }
      assert.equal(err?.code, 'closed-session')
      assert.match(err.message, /reached its lifetime of 0.8 s/)
      assert.ok(Date.now() - t0 >= 800)
      assert.equal(b.sessionCount, 0)
      assert.equal(b.reservedBytes, 0)
    } finally { await b.dispose(); head.dispose(); await ckpt.close() }
  })
})
