// Servers die (kill -9), hang (SIGSTOP) or vanish mid-generation: with spare holders the tokens
// are the same as without the fault; without one the error names the uncovered blocks.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, generate, seededRandom } from '@plexus/runtime'
import type { PlexusNode } from '@plexus/p2p'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { generateStoppingServer } from './support/hung-server.ts'

const SPANS = ['0:4', '4:8', '8:12']
const MAX_TOKENS = 16

describe('failover with real server processes', function () {
  this.timeout(300_000)
  let dir: string
  let model: string
  let prompt: number[]
  let reference: number[]
  let swarm: LocalSwarm
  let node: PlexusNode
  let client: OpenModel

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-failover-'))
    model = join(dir, 'small')
    await makeModel({ shape: 'small', dtype: 'bf16', out: model, seed: 11 })
    await initBackend('wasm')
    const rand = seededRandom(5)
    prompt = Array.from({ length: 48 }, () => 3 + Math.floor(rand() * 31000))
    const local = await openLocal(model)
    reference = (await generate(local.head, await local.session(prompt.length + MAX_TOKENS), prompt, { maxTokens: MAX_TOKENS })).tokenIds
    await local.close()
    // every span twice: a spare holder for each
    swarm = await startSwarm(model, [...SPANS, ...SPANS])
    node = await connectSwarm([swarm.bootstrapAddr])
    // client-relayed: a failed hop is repaired alone (forwarded routes rebuild: forwarding.test.ts)
    client = await openSwarm(node, { dir: model, forward: false })
  })

  after(async () => {
    await client?.close()
    await node?.stop()
    await swarm?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  const processOf = (peer: string): NodeProcess => swarm.nodes.find(n => n.peerId === peer)!
  const killHard = async (n: NodeProcess): Promise<void> => { n.child.kill('SIGKILL'); await n.stop() }
  /** Replaces a dead server by a fresh holder of the same blocks, so later tests have spares again. */
  const respawn = async (n: NodeProcess): Promise<void> => {
    swarm.nodes.splice(swarm.nodes.indexOf(n), 1)
    await swarm.add(`respawn[${n.ready.start}:${n.ready.end}]`, model, `${n.ready.start}:${n.ready.end}`)
  }

  for (const [position, hop] of [['first', 0], ['middle', 1], ['last', 2]] as const) {
    it(`kill -9 of the ${position} server during decode: same tokens`, async () => {
      const session = await client.session(prompt.length + MAX_TOKENS) as SwarmSession
      const victim = processOf(session.route[hop].peer)
      let n = 0
      const r = await generate(client.head, session, prompt, {
        maxTokens: MAX_TOKENS,
        onToken: async () => { if (++n === 5) await killHard(victim) }
      })
      await session.close()
      assert.deepEqual(r.tokenIds, reference)
      assert.ok(!session.route.some(h => h.peer === victim.peerId), 'the dead server left the route')
      await respawn(victim)
    })

    it(`kill -9 of the ${position} server during prefill: same tokens`, async () => {
      const session = await client.session(prompt.length + MAX_TOKENS) as SwarmSession
      const victim = processOf(session.route[hop].peer)
      // kill the server a few ms after the prefill step reached it, while it computes
      const live = (session as any).hops[hop].session
      const forward = live.forward.bind(live)
      live.forward = (h: Float32Array, t: number) => {
        const p = forward(h, t)
        setTimeout(() => { victim.child.kill('SIGKILL') }, 5)
        live.forward = forward
        return p
      }
      const r = await generate(client.head, session, prompt, { maxTokens: MAX_TOKENS })
      await session.close()
      await victim.stop()
      assert.deepEqual(r.tokenIds, reference)
      assert.ok(!session.route.some(h => h.peer === victim.peerId))
      await respawn(victim)
    })
  }

  it('routes around a stopped (SIGSTOP) server within 5 s, with the same tokens', async () => {
    const session = await client.session(prompt.length + MAX_TOKENS) as SwarmSession
    const victim = processOf(session.route[1].peer)
    const { result: r, slowestMs: slowest } = await generateStoppingServer(client.head, session, prompt, MAX_TOKENS, victim)
    await session.close()
    victim.child.kill('SIGCONT')
    assert.deepEqual(r.tokenIds, reference)
    assert.ok(!session.route.some(h => h.peer === victim.peerId))
    assert.ok(slowest < 5000, `the hung server was detected and routed around in ${slowest.toFixed(0)} ms`)
    await killHard(victim)
    await respawn(victim)
  })

  it('SIGTERM drains: the node leaves cleanly, its clients re-route, the tokens are the same', async () => {
    const session = await client.session(prompt.length + MAX_TOKENS) as SwarmSession
    const victim = processOf(session.route[1].peer)
    let n = 0
    let exited: Promise<number | null> | undefined
    const r = await generate(client.head, session, prompt, {
      maxTokens: MAX_TOKENS,
      onToken: () => {
        if (++n === 4) {
          exited = new Promise(resolve => victim.child.once('exit', (code) => resolve(code)))
          victim.child.kill('SIGTERM')
        }
      }
    })
    await session.close()
    assert.deepEqual(r.tokenIds, reference)
    assert.equal(await exited, 0, 'the drained node exits with status 0')
    assert.ok(!session.route.some(h => h.peer === victim.peerId))
    await respawn(victim)
  })

  it('without a spare holder, ends in a clear error naming the uncovered blocks', async () => {
    const holders = swarm.nodes.filter(n => n.ready.start === 8)
    const session = await client.session(prompt.length + MAX_TOKENS) as SwarmSession
    let n = 0
    await assert.rejects(generate(client.head, session, prompt, {
      maxTokens: MAX_TOKENS,
      onToken: async () => { if (++n === 3) for (const h of holders) await killHard(h) }
    }), /no peer serves blocks 8–11 of small/)
    await session.close()
  })
})
