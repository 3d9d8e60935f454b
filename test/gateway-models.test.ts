// Every model of a swarm behind one gateway: `plexus-client serve --bootstrap` with no --model,
// over a real swarm serving two models, driven by the official OpenAI and Ollama clients.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import { Ollama } from 'ollama'
import { initBackend, generate, applyChatTemplate } from '@plexus/runtime'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { startSwarm, CLIENT_BIN } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'

const USER = 'Which model are you?'

/** Greedy generation on a local model, as `plexus-client generate --local --chat` does it. */
async function localGreedy (m: OpenModel, content: string, maxTokens: number): Promise<string> {
  const ids = m.tokenizer!.encode(applyChatTemplate(m.tokenizerConfig!, [{ role: 'user', content }], { addGenerationPrompt: true }), { addSpecialTokens: false })
  const session = await m.session(ids.length + maxTokens)
  try {
    const r = await generate(m.head, session, ids, { maxTokens, temperature: 0, eosTokenIds: m.tokenizer!.eosTokenIds })
    return m.tokenizer!.decode(r.tokenIds, { skipSpecialTokens: true })
  } finally { await session.close() }
}

describe('one gateway, every model of the swarm', function () {
  this.timeout(240_000)
  let dir: string
  const local: Record<string, OpenModel> = {}
  let swarm: LocalSwarm | undefined
  let serve: ChildProcess | undefined
  let serveErr = ''
  let base: string
  let openai: OpenAI
  let ollama: Ollama

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-models-'))
    // two different models (other seeds, so other weights and ids, and other names)
    for (const [name, seed] of [['alpha', 3], ['beta', 4]] as const) {
      await makeModel({ shape: 'tiny', out: join(dir, name), seed, name })
      local[name] = await openLocal(join(dir, name))
    }
    swarm = await startSwarm(join(dir, 'alpha'), ['0:3'])
    await swarm.add('beta-node', join(dir, 'beta'), '0:3')
    serve = spawn(process.execPath, [CLIENT_BIN, 'serve', '--bootstrap', swarm.bootstrapAddr, '--port', '0', '--json', '--cache-dir', join(dir, 'cache')], { stdio: ['ignore', 'pipe', 'pipe'] })
    serve.stderr!.on('data', (d: Buffer) => { serveErr += d.toString() })
    const ready = await new Promise<any>((resolve, reject) => {
      createInterface({ input: serve!.stdout! }).once('line', (l) => { resolve(JSON.parse(l)) })
      serve!.once('exit', (code) => { reject(new Error(`serve exited (${code}):\n${serveErr}`)) })
    })
    assert.equal(ready.event, 'ready')
    assert.equal(ready.model, null, 'no model named at start')
    base = ready.url
    openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 })
    ollama = new Ollama({ host: base })
  })

  after(async () => {
    if (serve != null && serve.exitCode == null) {
      const exited = new Promise(resolve => serve!.once('exit', resolve))
      serve.kill('SIGTERM')
      const t = setTimeout(() => serve!.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(t)
    }
    await swarm?.stop()
    for (const m of Object.values(local)) await m.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('lists both models of the swarm (OpenAI /v1/models, Ollama /api/tags), none open yet', async () => {
    const ids = (await openai.models.list()).data.map(m => m.id).sort()
    assert.deepEqual(ids, ['alpha', 'beta'])
    const tags = (await ollama.list()).models.map(m => m.name).sort()
    assert.deepEqual(tags, ['alpha:latest', 'beta:latest'])
    assert.equal(tags.length, 2)
    assert.deepEqual((await ollama.ps()).models, [])
  })

  it('each request is answered by the model it named, with the tokens of local generation on that model', async () => {
    const want = { alpha: await localGreedy(local.alpha, USER, 12), beta: await localGreedy(local.beta, USER, 12) }
    assert.notEqual(want.alpha, want.beta, 'the two models must differ for this test to mean anything')
    // both at once: the first requests open (fetch and load) both models concurrently
    const [a, b] = await Promise.all(['alpha', 'beta'].map(async model =>
      await openai.chat.completions.create({ model, messages: [{ role: 'user', content: USER }], max_tokens: 12, temperature: 0 })))
    assert.equal(a.model, 'alpha')
    assert.equal(a.choices[0].message.content, want.alpha)
    assert.equal(b.model, 'beta')
    assert.equal(b.choices[0].message.content, want.beta, serveErr)
    // by id prefix too, and through Ollama's API
    const r = await ollama.chat({ model: local.beta.manifest?.id?.slice(0, 12) ?? 'beta', messages: [{ role: 'user', content: USER }], stream: false, options: { temperature: 0, num_predict: 12 } })
    assert.equal(r.message.content, want.beta)
  })

  it('Ollama /api/ps shows the open models; /api/show describes one', async () => {
    const ps = (await ollama.ps()).models.map(m => m.name).sort()
    assert.deepEqual(ps, ['alpha:latest', 'beta:latest'])
    const show = await ollama.show({ model: 'alpha' })
    const cfg = local.alpha.config
    const info = show.model_info as unknown as Record<string, unknown>
    assert.equal(info['llama.context_length'], cfg.maxPositions)
    assert.equal(info['llama.block_count'], cfg.numLayers)
    assert.equal(info['llama.embedding_length'], cfg.hiddenSize)
    assert.equal(show.template, local.alpha.tokenizerConfig!.chat_template)
    assert.ok(show.capabilities.includes('completion'))
  })

  it('a model the swarm does not serve is a 404 naming those it does', async () => {
    await assert.rejects(openai.chat.completions.create({ model: 'gamma', messages: [{ role: 'user', content: USER }], max_tokens: 4 }),
      (err: any) => err.status === 404 && /gamma/.test(err.message) && /alpha/.test(err.message) && /beta/.test(err.message))
    await assert.rejects(ollama.show({ model: 'gamma' }), (err: any) => err.status_code === 404 && /not found/.test(err.error))
  })
})
