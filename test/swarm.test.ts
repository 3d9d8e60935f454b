// A model split across real plexus-node processes on 127.0.0.1 gives exactly what one machine gives.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { fixtureDir, golden, runCli, CLIENT_BIN } from './support/fixtures.ts'

async function generateVia (bootstrap: string | undefined, model: string, prompt: number[], maxTokens: number, extra: string[] = []): Promise<{ code: number, out: any, stderr: string }> {
  const where = bootstrap != null ? ['--bootstrap', bootstrap] : ['--local']
  const r = await runCli(CLIENT_BIN, ['generate', ...where, '--model', model, '--token-ids', prompt.join(','), '--max-tokens', String(maxTokens), '--ignore-eos', '--json', ...extra])
  let out: any
  try { out = JSON.parse(r.stdout) } catch {}
  return { code: r.code, out, stderr: r.stderr }
}

describe('swarm of processes on loopback', function () {
  this.timeout(240_000)

  const cases: Array<[string, string[]]> = [
    ['tiny-llama', ['0:1', '1:2', '2:3']],
    ['tiny-qwen2-tied-bf16', ['0:2', '2:3', '3:4']],
    ['tiny-llama3-sharded-bf16', ['0:1', '1:3', '3:4']]
  ]
  for (const [name, spans] of cases) {
    it(`${name} split ${spans.join(' ')}: greedy tokens equal the golden reference`, async () => {
      const g = golden(name)
      const swarm = await startSwarm(fixtureDir(name), spans)
      try {
        const r = await generateVia(swarm.bootstrapAddr, fixtureDir(name), g.prompt_ids, g.greedy_new_ids.length)
        assert.equal(r.code, 0, r.stderr)
        assert.deepEqual(r.out.token_ids, g.greedy_new_ids)
        assert.equal(r.out.route.length, 3)
        assert.deepEqual(r.out.route.map((h: any) => `${h.start}:${h.end}`), spans)
      } finally { await swarm.stop() }
    })
  }

  describe('a small-shape model (hidden 768, 12 blocks) split 3 ways', () => {
    let dir: string
    let model: string
    let swarm: LocalSwarm
    const prompt = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278]
    let local: number[]

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'plexus-swarm-'))
      model = join(dir, 'small')
      await makeModel({ shape: 'small', dtype: 'bf16', out: model, seed: 3 })
      const r = await generateVia(undefined, model, prompt, 24)
      assert.equal(r.code, 0, r.stderr)
      local = r.out.token_ids
      swarm = await startSwarm(model, ['0:4', '4:8', '8:12'])
    })
    after(async () => {
      await swarm?.stop()
      await rm(dir, { recursive: true, force: true })
    })

    it('gives the same greedy tokens as generate --local', async () => {
      const r = await generateVia(swarm.bootstrapAddr, model, prompt, 24)
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, local)
      assert.equal(r.out.model_id, swarm.nodes[0].ready.modelId)
    })

    it('gives the same tokens with activations sent as float16 (half the bytes)', async () => {
      const r = await generateVia(swarm.bootstrapAddr, model, prompt, 24, ['--wire-dtype', 'f16'])
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, local)
    })

    it('lists the model and its block coverage', async () => {
      const r = await runCli(CLIENT_BIN, ['models', '--bootstrap', swarm.bootstrapAddr, '--json'])
      assert.equal(r.code, 0, r.stderr)
      const { models } = JSON.parse(r.stdout)
      const m = models.find((x: any) => x.modelId === swarm.nodes[0].ready.modelId)
      assert.equal(m.name, 'small')
      assert.equal(m.numBlocks, 12)
      assert.deepEqual(m.coverage, new Array(12).fill(1))
      assert.equal(m.servers, 3)
      assert.equal(m.offersHead, true)
      assert.deepEqual(m.formats, ['bf16'])
      assert.equal(m.backends.length, 1)
    })

    it('routes through overlapping spans and still gives the same tokens', async () => {
      // [2, 10) overlaps two servers; with it the route may hand over mid-span
      const extra = await swarm.add('overlap[2:10]', model, '2:10')
      const r = await generateVia(swarm.bootstrapAddr, model, prompt, 24)
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, local)
      const route = r.out.route as Array<{ start: number, end: number }>
      assert.equal(route[0].start, 0)
      assert.equal(route[route.length - 1].end, 12)
      for (let i = 1; i < route.length; i++) assert.equal(route[i].start, route[i - 1].end)
      await extra.stop()
      swarm.nodes.splice(swarm.nodes.indexOf(extra), 1)
    })

    it('stops routing to a node that stopped, using a spare holder', async () => {
      const spare = await swarm.add('spare[4:8]', model, '4:8')
      const victim = swarm.nodes.find(n => n.ready.start === 4 && n !== spare)!
      victim.child.kill('SIGKILL')
      await victim.stop()
      const r = await generateVia(swarm.bootstrapAddr, model, prompt, 24)
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, local)
      assert.ok(!r.out.route.some((h: any) => h.peer === victim.peerId), 'the dead node is not in the route')
      assert.ok(r.out.route.some((h: any) => h.peer === spare.peerId), 'the spare holder serves its blocks')
    })

    it('names the blocks nobody serves', async () => {
      for (const n of swarm.nodes.filter(n => n.ready.start === 4)) await n.stop()
      const r = await generateVia(swarm.bootstrapAddr, model, prompt, 4)
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /no peer serves blocks 4–7 of small/)
    })
  })
})
