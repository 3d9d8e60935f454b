// Server-to-server forwarding with real server processes: the same tokens as one process and as
// client-relayed routes, recovery from a server killed mid-route, and servers that feed and
// forward only the sessions the client named.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { initBackend, generate, seededRandom, readModelConfig } from '@plexus/runtime'
import { createPlexusNode, dialBootstrap } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { encodeMessage, decodeMessage } from '@plexus/protocol'
import { SESSION_PROTOCOL } from '@plexus/p2p'
import type { SessionMessage } from '@plexus/protocol'
import type { AuditEvent } from '@plexus/client'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { generateStoppingServer } from './support/hung-server.ts'

const SPANS = ['0:4', '4:8', '8:12']
const MAX_TOKENS = 16

describe('server-to-server forwarding with real server processes', function () {
  this.timeout(300_000)
  let dir: string
  let model: string
  let modelId: string
  let hidden: number
  let prompt: number[]
  let reference: number[]
  let swarm: LocalSwarm
  let node: PlexusNode
  let relayed: OpenModel
  let forwarded: OpenModel

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-forwarding-'))
    model = join(dir, 'small')
    await makeModel({ shape: 'small', dtype: 'bf16', out: model, seed: 11 })
    hidden = (await readModelConfig(model)).hiddenSize
    await initBackend('wasm')
    const rand = seededRandom(9)
    prompt = Array.from({ length: 40 }, () => 3 + Math.floor(rand() * 31000))
    const local = await openLocal(model)
    reference = (await generate(local.head, await local.session(prompt.length + MAX_TOKENS), prompt, { maxTokens: MAX_TOKENS })).tokenIds
    await local.close()
    // every span twice: a spare holder for each server killed below (added one by one: six
    // servers becoming findable at once can take longer than a loaded machine allows)
    swarm = await startSwarm(model, SPANS)
    for (const b of SPANS) await swarm.add(`spare[${b}]`, model, b)
    node = await connectSwarm([swarm.bootstrapAddr])
    relayed = await openSwarm(node, { dir: model, forward: false })
    // forwarding is the default
    forwarded = await openSwarm(node, { dir: model })
    modelId = forwarded.manifest!.id
  })

  after(async () => {
    await relayed?.close()
    await forwarded?.close()
    await node?.stop()
    await swarm?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  const processOf = (peer: string): NodeProcess => swarm.nodes.find(n => n.peerId === peer)!

  it('a forwarded route gives the same tokens as one process and as a client-relayed route', async () => {
    const viaRelay = await relayed.session(prompt.length + MAX_TOKENS) as SwarmSession
    const r1 = await generate(relayed.head, viaRelay, prompt, { maxTokens: MAX_TOKENS })
    await viaRelay.close()
    const viaForward = await forwarded.session(prompt.length + MAX_TOKENS) as SwarmSession
    const r2 = await generate(forwarded.head, viaForward, prompt, { maxTokens: MAX_TOKENS })
    const hops = hopSessions(viaForward)
    await viaForward.close()
    assert.deepEqual(r1.tokenIds, reference)
    assert.deepEqual(r2.tokenIds, reference)
    assert.equal(hops.length, 3)
    // every step (prefill + decodes) left the first two servers for the next server, not for us
    const steps = MAX_TOKENS
    assert.deepEqual(hops.map(h => h.forwardedSteps), [steps, steps, 0])
    // …and every hop's commitment came back and was checked
    assert.deepEqual(hops.map(h => h.committedSteps), [steps, steps, steps])
  })

  it('float16 activations: a forwarded route gives the same tokens as a relayed one (the commitments chain through the wire dtype)', async () => {
    const tokensVia = async (forward: boolean): Promise<{ tokens: number[], forwardedSteps: number[], steps: number }> => {
      const m = await openSwarm(node, { dir: model, forward, dtype: 'f16' })
      try {
        const s = await m.session(prompt.length + MAX_TOKENS) as SwarmSession
        const r = await generate(m.head, s, prompt, { maxTokens: MAX_TOKENS })
        const hops = hopSessions(s)
        await s.close()
        return { tokens: r.tokenIds, forwardedSteps: hops.map(h => h.forwardedSteps), steps: hops[2].committedSteps }
      } finally { await m.close() }
    }
    const relayedF16 = await tokensVia(false)
    const forwardedF16 = await tokensVia(true)
    assert.deepEqual(forwardedF16.tokens, relayedF16.tokens)
    assert.deepEqual(relayedF16.forwardedSteps, [0, 0, 0])
    // every step (it may stop early at an end token) went server to server
    const steps = forwardedF16.steps
    assert.ok(steps > 1)
    assert.deepEqual(forwardedF16.forwardedSteps, [steps, steps, 0])
  })

  it('a stopped (SIGSTOP) middle server of a forwarded route is routed around within 6 s: same tokens', async () => {
    const session = await forwarded.session(prompt.length + MAX_TOKENS) as SwarmSession
    const victim = processOf(session.route[1].peer)
    const { result: r, slowestMs: slowest } = await generateStoppingServer(forwarded.head, session, prompt, MAX_TOKENS, victim)
    await session.close()
    victim.child.kill('SIGKILL')
    await victim.stop()
    assert.deepEqual(r.tokenIds, reference)
    assert.ok(!session.route.some(h => h.peer === victim.peerId))
    // the client's liveness pings drop the silent server (a 1 s beat, a 3 s deadline); the rebuild replays
    assert.ok(slowest < 6000, `the hung server was routed around in ${slowest.toFixed(0)} ms`)
    // a spare again for the tests below
    swarm.nodes.splice(swarm.nodes.indexOf(victim), 1)
    await swarm.add(`respawn[${victim.ready.start}:${victim.ready.end}]`, model, `${victim.ready.start}:${victim.ready.end}`)
  })

  for (const [position, hop] of [['middle', 1], ['first', 0], ['last', 2]] as const) {
    it(`kill -9 of the ${position} server of a forwarded route during decode: same tokens`, async () => {
      const session = await forwarded.session(prompt.length + MAX_TOKENS) as SwarmSession
      const victim = processOf(session.route[hop].peer)
      let n = 0
      const r = await generate(forwarded.head, session, prompt, {
        maxTokens: MAX_TOKENS,
        onToken: async () => { if (++n === 5) { victim.child.kill('SIGKILL'); await victim.stop() } }
      })
      const hops = hopSessions(session)
      await session.close()
      assert.deepEqual(r.tokenIds, reference)
      assert.ok(!session.route.some(h => h.peer === victim.peerId), 'the dead server left the route')
      // the rebuilt route forwards too
      assert.ok(hops[0].forwardedSteps > 0 && hops[1].forwardedSteps > 0, 'the new route forwards')
    })
  }

  describe('a server feeds and forwards only what the client named', () => {
    let rogue: PlexusNode
    before(async () => {
      rogue = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client' })
      await dialBootstrap(rogue, [swarm.bootstrapAddr])
    })
    after(async () => { await rogue?.stop() })

    const serverOf = (blocks: string): NodeProcess => swarm.nodes.find(n => `${n.ready.start}:${n.ready.end}` === blocks && n.child.exitCode == null && n.child.signalCode == null)!
    const dial = async (from: PlexusNode, to: NodeProcess): Promise<{ io: ReturnType<typeof lpStream>, close: () => Promise<void> }> => {
      const stream = await from.dialProtocol(to.addrs.map(a => multiaddrOf(a, to.peerId)), SESSION_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      return { io: lpStream(stream, { maxDataLength: 1 << 26 }), close: async () => { await stream.close().catch(() => stream.abort(new Error('done'))) } }
    }
    const ask = async (c: { io: ReturnType<typeof lpStream> }, m: SessionMessage): Promise<SessionMessage> => {
      await c.io.write(encodeMessage(m))
      return decodeMessage((await c.io.read({ signal: AbortSignal.timeout(15_000) })).subarray())
    }

    it('refuses an attach from a peer other than the previous hop the client named, and client steps on a fed session', async () => {
      const b = serverOf('4:8')
      const a = serverOf('0:4')
      const sessionId = randomBytes(16).toString('hex')
      const own = await dial(node, b)
      // the client names server A as the only feeder of this session on B
      assert.equal((await ask(own, { type: 'open', sessionId, modelId, start: 4, end: 8, maxLength: 8, prev: a.peerId })).type, 'opened')
      // another peer cannot attach to it…
      const intruder = await dial(rogue, b)
      const refused = await ask(intruder, { type: 'attach', sessionId })
      assert.equal(refused.type, 'error')
      assert.equal((refused as any).code, 'bad-request')
      assert.match((refused as any).message, /is not fed by .*its client named another previous hop/)
      // …nor can the client step it directly
      const step = await ask(own, { type: 'step', sessionId, step: 0, position: 0, tokens: 1, hidden, dtype: 'f32', data: new Float32Array(hidden).fill(0.5) })
      assert.equal(step.type, 'error')
      assert.match((step as any).message, /fed by its previous hop/)
      await intruder.close()
      await own.close()
      // B keeps serving others
      const s = await forwarded.session(prompt.length + 2) as SwarmSession
      assert.deepEqual((await generate(forwarded.head, s, prompt, { maxTokens: 2 })).tokenIds, reference.slice(0, 2))
      await s.close()
    })

    it('refuses to open a forwarded session whose next hop did not name this server', async () => {
      const a = serverOf('0:4')
      const b = serverOf('4:8')
      // a session on B fed by the rogue peer, not by A
      const victimSession = randomBytes(16).toString('hex')
      const onB = await dial(node, b)
      assert.equal((await ask(onB, { type: 'open', sessionId: victimSession, modelId, start: 4, end: 8, maxLength: 8, prev: rogue.peerId.toString() })).type, 'opened')
      // the rogue asks A to push into it: B refuses A's attach, so A refuses the open
      const onA = await dial(rogue, a)
      const r = await ask(onA, { type: 'open', sessionId: randomBytes(16).toString('hex'), modelId, start: 0, end: 4, maxLength: 8, next: { peer: b.peerId, sessionId: victimSession, addrs: b.addrs } })
      assert.equal(r.type, 'error')
      assert.equal((r as any).code, 'next-hop')
      assert.match((r as any).message, /refused the attach: bad-request/)
      // a next hop with no such session at all
      const onA2 = await dial(rogue, a)
      const r2 = await ask(onA2, { type: 'open', sessionId: randomBytes(16).toString('hex'), modelId, start: 0, end: 4, maxLength: 8, next: { peer: b.peerId, sessionId: randomBytes(16).toString('hex'), addrs: b.addrs } })
      assert.equal((r2 as any).code, 'next-hop')
      assert.match((r2 as any).message, /unknown-session/)
      // a route may not loop a server onto itself
      const onA3 = await dial(rogue, a)
      const r3 = await ask(onA3, { type: 'open', sessionId: randomBytes(16).toString('hex'), modelId, start: 0, end: 4, maxLength: 8, next: { peer: a.peerId, sessionId: victimSession } })
      assert.equal((r3 as any).code, 'bad-request')
      await Promise.all([onA, onA2, onA3, onB].map(async c => { await c.close() }))
    })
  })
})

function multiaddrOf (addr: string, peer: string): Multiaddr {
  return multiaddr(addr.includes('/p2p/') ? addr : `${addr}/p2p/${peerIdFromString(peer).toString()}`)
}

describe('spot checks on a forwarded route', function () {
  this.timeout(300_000)
  const MAX = 10
  // the cheater perturbs every output by 5% of its RMS; it is the only holder of blocks 0–2 when the route opens
  const t = tinySwarm('forwarding-verify', 31, async (swarm, model) => await Promise.all([
    swarm.add('cheater[0:3]', model, '0:3', ['--fault-perturb', '1,0.05']),
    swarm.add('honest[3:6]', model, '3:6'),
    swarm.add('verifier', model, undefined, ['--verify'])
  ]))

  it('every hop is checked; the cheater is caught, the route rebuilt and forwarded again: honest tokens', async () => {
    const { swarm, node, model } = t
    const rand = seededRandom(3)
    const prompt = Array.from({ length: 9 }, () => 3 + Math.floor(rand() * 500))
    const reference = await localTokens(model, prompt, MAX)
    const events: AuditEvent[] = []
    const m = await openSwarm(node, { dir: model, forward: true, trust: 'verified', checkRate: 1, checkEvery: 2, onAudit: e => { events.push(e) } })
    try {
      const session = await m.session(prompt.length + MAX) as SwarmSession
      const cheater = swarm.nodes.find(n => n.name === 'cheater[0:3]')!
      assert.equal(session.route[0].peer, cheater.peerId, 'the first route goes through the cheater')
      await swarm.add('honest[0:3]', model, '0:3')
      const delivered: number[] = []
      const r = await generate(m.head, session, prompt, { maxTokens: MAX, onToken: id => { delivered.push(id) } })
      const hops = hopSessions(session)
      await session.close()
      assert.deepEqual(r.tokenIds, reference)
      assert.deepEqual(delivered, reference, 'only confirmed tokens are delivered')
      const frauds = events.filter(e => e.kind === 'fraud')
      assert.equal(frauds.length, 1, JSON.stringify(events.map(e => e.kind)))
      assert.equal(frauds[0].server, cheater.peerId)
      assert.ok(!session.route.some(h => h.peer === cheater.peerId))
      // both hops of the final route were checked by the verifier, and it still forwards
      const checked = new Set(events.filter(e => e.kind === 'checked').map(e => e.server))
      for (const h of session.route) assert.ok(checked.has(h.peer), `hop ${h.peer} checked`)
      assert.equal(session.route.length, 2)
      // under checks every hop returns its output as well (so none can tell which hop is checked): no bare `forwarded`
      assert.ok(hops.every(h => h.forwardedSteps === 0) && hops.every(h => h.committedSteps > 0))
      assert.equal(hops[1].init.prev, session.route[0].peer, 'the second hop is fed by the first, not by the client')
    } finally { await m.close() }
  })
})

describe('a route through a server that does not forward', function () {
  this.timeout(300_000)
  const MAX = 10
  const t = tinySwarm('no-forwarding', 5, async (swarm, model) => await Promise.all([swarm.add('first[0:3]', model, '0:3', ['--no-forwarding']), swarm.add('second[3:6]', model, '3:6')]))

  it('is relayed by the client: the same tokens, the server kept (not banned), rejected drafts rolled back', async () => {
    const rand = seededRandom(8)
    const { swarm, node, model } = t
    const prompt = Array.from({ length: 9 }, () => 3 + Math.floor(rand() * 500))
    const reference = await localTokens(model, prompt, MAX)
    const m = await openSwarm(node, { dir: model })
    try {
      const session = await m.session(prompt.length + MAX) as SwarmSession
      const first = swarm.nodes.find(n => n.name === 'first[0:3]')!
      assert.equal(session.route[0].peer, first.peerId)
      const r = await generate(m.head, session, prompt, { maxTokens: MAX })
      assert.deepEqual(r.tokenIds, reference)
      const hops = hopSessions(session)
      assert.deepEqual(hops.map(h => h.forwardedSteps), [0, 0], 'no hop forwarded')
      assert.deepEqual(hops.map(h => h.committedSteps), [MAX, MAX], 'every step came back to the client, committed')
      assert.equal(hops[1].init.prev, undefined, 'the second hop is fed by the client')
      // a rollback rides on the next step through the relayed route too
      await session.truncate(prompt.length + 3)
      const x = m.head.embed([reference[3]])
      const again = await session.forward(x, 1)
      const local2 = await openLocal(model)
      const ls = await local2.session(prompt.length + MAX)
      await ls.forward(m.head.embed([...prompt, ...reference.slice(0, 3)]), prompt.length + 3)
      const want = await ls.forward(m.head.embed([reference[3]]), 1)
      await local2.close()
      let d = 0
      for (let i = 0; i < want.length; i++) d = Math.max(d, Math.abs(want[i] - again[i]))
      assert.ok(d < 1e-3, `after the rollback the hidden states differ by ${d}`)
      await session.close()
    } finally { await m.close() }
  })
})

/** A swarm of a 6-block tiny model for one describe block: `add` starts its servers. */
function tinySwarm (tag: string, seed: number, add: (swarm: LocalSwarm, model: string) => Promise<unknown>): { model: string, swarm: LocalSwarm, node: PlexusNode } {
  const t = {} as { model: string, swarm: LocalSwarm, node: PlexusNode, dir?: string }
  before(async () => {
    t.dir = await mkdtemp(join(tmpdir(), `plexus-${tag}-`))
    t.model = join(t.dir, 'tiny6')
    await makeModel({ shape: 'tiny', layers: 6, out: t.model, seed, name: 'tiny6' })
    await initBackend('wasm')
    t.swarm = await startSwarm(t.model, [])
    await add(t.swarm, t.model)
    t.node = await connectSwarm([t.swarm.bootstrapAddr])
  })
  after(async () => {
    await t.node?.stop()
    await t.swarm?.stop()
    if (t.dir != null) await rm(t.dir, { recursive: true, force: true })
  })
  return t
}

/** Greedy tokens of one process. */
async function localTokens (model: string, prompt: number[], max: number): Promise<number[]> {
  const local = await openLocal(model)
  try {
    return (await generate(local.head, await local.session(prompt.length + max), prompt, { maxTokens: max })).tokenIds
  } finally { await local.close() }
}

function hopSessions (s: SwarmSession): any[] { return (s as any).hops.map((h: any) => h.session) }
