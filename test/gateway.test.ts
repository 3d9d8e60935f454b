// The HTTP gateway driven by the official OpenAI, Anthropic and Ollama clients, over a real
// 3-process swarm: same tokens as local generation, log-probabilities, streaming, cancellation, errors.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import Anthropic from '@anthropic-ai/sdk'
import { Ollama } from 'ollama'
import { initBackend, generate, logSoftmax, applyChatTemplate } from '@plexus/runtime'
import type { PlexusNode } from '@plexus/p2p'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { openLocal, openSwarm, connectSwarm, stopNode } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { startSwarm, CLIENT_BIN } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'

const KEY = 'test-key-123'
const USER = 'Tell me about the swarm.'

describe('HTTP gateway over a 3-node swarm', function () {
  this.timeout(240_000)
  let dir: string
  let modelDir: string
  let local: OpenModel
  let swarm: LocalSwarm | undefined
  let node: PlexusNode | undefined
  let remote: OpenModel | undefined
  let gw: Gateway
  let base: string
  let openai: OpenAI
  let anthropic: Anthropic
  let ollama: Ollama

  /** Greedy generation on the local model, as `plexus-client generate --local` does it. */
  async function localGreedy (ids: number[], maxTokens: number, keepLogits = false): Promise<{ ids: number[], text: string, logits?: Float32Array[] }> {
    const session = await local.session(ids.length + maxTokens)
    try {
      const r = await generate(local.head, session, ids, { maxTokens, temperature: 0, eosTokenIds: local.tokenizer!.eosTokenIds, keepLogits })
      return { ids: r.tokenIds, text: local.tokenizer!.decode(r.tokenIds, { skipSpecialTokens: true }), logits: r.logits }
    } finally { await session.close() }
  }
  const chatIds = (content: string): number[] =>
    local.tokenizer!.encode(applyChatTemplate(local.tokenizerConfig!, [{ role: 'user', content }], { addGenerationPrompt: true }), { addSpecialTokens: false })

  async function openSessions (): Promise<number> {
    const text = await (await fetch(`${base}/metrics`)).text()
    const m = /^plexus_gateway_open_sessions (\d+)/m.exec(text)
    assert.ok(m != null, text)
    return Number(m[1])
  }

  async function post (path: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number, json: any }> {
    const r = await fetch(`${base}${path}`, { method: 'POST', body, headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', ...headers } })
    return { status: r.status, json: await r.json() }
  }

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-gateway-'))
    modelDir = join(dir, 'tiny')
    await makeModel({ shape: 'tiny', out: modelDir, seed: 7 })
    local = await openLocal(modelDir)
    swarm = await startSwarm(modelDir, ['0:1', '1:2', '2:3'], ['--metrics-port', '0'])
    node = await connectSwarm([swarm.bootstrapAddr])
    remote = await openSwarm(node, { dir: modelDir })
    gw = await createGateway({ model: remote, apiKey: KEY, aliases: [modelDir], maxConcurrent: 16 })
    base = await gw.listen(0)
    openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 0 })
    anthropic = new Anthropic({ baseURL: base, apiKey: KEY, maxRetries: 0 })
    ollama = new Ollama({ host: base, headers: { Authorization: `Bearer ${KEY}` } })
  })

  after(async () => {
    await gw?.close()
    await remote?.close()
    if (node != null) await stopNode(node)
    await swarm?.stop()
    await local?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('lists its one model (OpenAI /v1/models, Ollama /api/tags)', async () => {
    const models = await openai.models.list()
    assert.deepEqual(models.data.map(m => m.id), [gw.modelName])
    const tags = await ollama.list()
    assert.equal(tags.models[0].name, `${gw.modelName}:latest`)
  })

  it('OpenAI chat: streamed text equals non-streamed, and both equal local greedy generation', async () => {
    const want = await localGreedy(chatIds(USER), 16)
    const req = { model: gw.modelName, messages: [{ role: 'user' as const, content: USER }], max_tokens: 16, temperature: 0 }
    const full = await openai.chat.completions.create(req)
    assert.equal(full.choices[0].message.content, want.text)
    assert.equal(full.usage?.prompt_tokens, chatIds(USER).length)
    assert.equal(full.usage?.completion_tokens, want.ids.length)
    const stream = await openai.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } })
    let text = ''
    let usage: any
    let finish: string | null = null
    for await (const c of stream) {
      text += c.choices[0]?.delta?.content ?? ''
      finish = c.choices[0]?.finish_reason ?? finish
      if (c.usage != null) usage = c.usage
    }
    assert.equal(text, want.text)
    assert.equal(finish, full.choices[0].finish_reason)
    assert.equal(usage.completion_tokens, want.ids.length)
  })

  it('OpenAI completions: token-id prompt with logprobs gives the model\'s log-probabilities', async () => {
    const prompt = [1, 17, 99, 250, 3, 42]
    const want = await localGreedy(prompt, 8, true)
    const r = await openai.completions.create({ model: gw.modelName, prompt, max_tokens: 8, temperature: 0, logprobs: 5 })
    const lp = r.choices[0].logprobs!
    assert.equal(r.choices[0].text, want.text)
    assert.equal(lp.token_logprobs!.length, want.ids.length)
    for (let i = 0; i < want.ids.length; i++) {
      const ref = logSoftmax(want.logits![i])
      assert.ok(Math.abs(lp.token_logprobs![i]! - ref[want.ids[i]]) < 1e-4, `step ${i}: ${lp.token_logprobs![i]} vs ${ref[want.ids[i]]}`)
      const top = [...ref].sort((a, b) => b - a).slice(0, 5)
      const got = Object.values(lp.top_logprobs![i]!).sort((a, b) => b - a)
      // Distinct ids may decode to the same text (the map then holds fewer entries).
      got.forEach((v, k) => assert.ok(top.some(t => Math.abs(t - v) < 1e-4), `step ${i} top ${k}: ${v}`))
    }
    // Chat logprobs: one entry per token, with top_logprobs.
    const c = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 })
    assert.equal(c.choices[0].logprobs!.content!.length, c.usage!.completion_tokens)
    assert.equal(c.choices[0].logprobs!.content![0].top_logprobs.length, 3)
  })

  it('OpenAI completions: a stop string ends the text before it (streamed and not)', async () => {
    const prompt = 'The swarm'
    const free = await openai.completions.create({ model: gw.modelName, prompt, max_tokens: 24, temperature: 0 })
    const text = free.choices[0].text
    assert.ok(text.length >= 6, `too little text to cut: ${JSON.stringify(text)}`)
    const stop = text.slice(3, 5)
    const cut = text.slice(0, text.indexOf(stop))
    const r = await openai.completions.create({ model: gw.modelName, prompt, max_tokens: 24, temperature: 0, stop: [stop, 'never-appears'] })
    assert.equal(r.choices[0].text, cut)
    assert.equal(r.choices[0].finish_reason, 'stop')
    let streamed = ''
    for await (const c of await openai.completions.create({ model: gw.modelName, prompt, max_tokens: 24, temperature: 0, stop, stream: true })) streamed += c.choices[0]?.text ?? ''
    assert.equal(streamed, cut)
  })

  it('Anthropic messages: streamed equals non-streamed equals OpenAI chat', async () => {
    const chat = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 12, temperature: 0 })
    const req = { model: gw.modelName, max_tokens: 12, temperature: 0, messages: [{ role: 'user' as const, content: USER }] }
    const msg = await anthropic.messages.create(req)
    assert.equal(msg.type, 'message')
    assert.equal(msg.content[0].type === 'text' ? msg.content[0].text : undefined, chat.choices[0].message.content)
    assert.equal(msg.usage.output_tokens, chat.usage!.completion_tokens)
    const stream = anthropic.messages.stream(req)
    const types: string[] = []
    stream.on('streamEvent', (e) => { types.push(e.type) })
    assert.equal(await stream.finalText(), chat.choices[0].message.content)
    for (const t of ['message_start', 'content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop']) assert.ok(types.includes(t), `no ${t} in ${types.join()}`)
  })

  it('Ollama chat and generate: streamed equals non-streamed equals OpenAI chat', async () => {
    const chat = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 12, temperature: 0 })
    const req = { model: gw.modelName, messages: [{ role: 'user', content: USER }], options: { temperature: 0, num_predict: 12 } }
    const full = await ollama.chat({ ...req, stream: false })
    assert.equal(full.message.content, chat.choices[0].message.content)
    assert.equal(full.eval_count, chat.usage!.completion_tokens)
    let text = ''
    for await (const part of await ollama.chat({ ...req, stream: true })) text += part.message.content
    assert.equal(text, full.message.content)
    const gen = await ollama.generate({ model: gw.modelName, prompt: USER, options: { temperature: 0, num_predict: 12 }, stream: false })
    assert.equal(gen.response, chat.choices[0].message.content)
    let streamed = ''
    for await (const part of await ollama.generate({ model: gw.modelName, prompt: USER, options: { temperature: 0, num_predict: 12 }, stream: true })) streamed += part.response
    assert.equal(streamed, gen.response)
  })

  it('eight concurrent streaming requests all complete', async () => {
    const one = async (i: number): Promise<string> => {
      let text = ''
      const s = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: `${USER} ${i}` }], max_tokens: 10, temperature: 0, stream: true })
      for await (const c of s) text += c.choices[0]?.delta?.content ?? ''
      return text
    }
    const texts = await Promise.all(Array.from({ length: 8 }, async (_, i) => await one(i)))
    const want = await Promise.all(Array.from({ length: 8 }, async (_, i) => (await localGreedy(chatIds(`${USER} ${i}`), 10)).text))
    assert.deepEqual(texts, want)
    assert.equal(await openSessions(), 0)
  })

  it('a request aborted mid-stream frees its session and the swarm keeps serving', async () => {
    const ac = new AbortController()
    const s = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 1500, temperature: 0, stream: true }, { signal: ac.signal })
    let chunks = 0
    // The SDK ends the iteration quietly on abort (older versions throw).
    await (async () => {
      for await (const c of s) { if ((c.choices[0]?.delta?.content ?? '') !== '' && ++chunks === 3) ac.abort() }
    })().catch((err: Error) => { assert.match(err.name, /Abort/) })
    assert.equal(chunks, 3)
    const deadline = Date.now() + 20_000
    while (await openSessions() !== 0) {
      assert.ok(Date.now() < deadline, 'the aborted session is still open')
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    // and every server of the route freed it too (their own /metrics)
    for (const n of swarm!.nodes) {
      for (;;) {
        const text = await (await fetch(`http://127.0.0.1:${n.ready.metricsPort}/metrics`)).text()
        const open = Number(/^plexus_node_sessions (\d+)/m.exec(text)?.[1])
        assert.match(text, /plexus_node_steps_total\{kind="decode"\} \d+/)
        if (open === 0) break
        assert.ok(Date.now() < deadline, `${n.name} still holds ${open} session(s)`)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
    const r = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 4, temperature: 0 })
    assert.equal(r.usage!.completion_tokens, 4)
    const metrics = await (await fetch(`${base}/metrics`)).text()
    assert.match(metrics, /plexus_gateway_requests_total\{endpoint="\/v1\/chat\/completions",status="499"\} 1/)
    assert.match(metrics, /plexus_gateway_generated_tokens_total \d+/)
    assert.match(metrics, /plexus_gateway_token_latency_seconds_bucket/)
  })

  it('bad requests get the right 4xx in each API\'s own error shape', async () => {
    const body = (o: unknown): string => JSON.stringify(o)
    const msgs = [{ role: 'user', content: 'hi' }]
    // OpenAI
    let r = await post('/v1/chat/completions', '{"model": ')
    assert.equal(r.status, 400); assert.equal(r.json.error.type, 'invalid_request_error'); assert.match(r.json.error.message, /JSON/)
    r = await post('/v1/chat/completions', body({ model: 'nope', messages: msgs }))
    assert.equal(r.status, 404); assert.equal(r.json.error.code, 'model_not_found'); assert.equal(r.json.error.param, 'model')
    r = await post('/v1/chat/completions', body({ model: gw.modelName }))
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'messages')
    r = await post('/v1/completions', body({ model: gw.modelName }))
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'prompt')
    r = await post('/v1/completions', body({ model: gw.modelName, prompt: [1, 99999] }))
    assert.equal(r.status, 400); assert.match(r.json.error.message, /vocabulary/)
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs, temperature: -1 }))
    assert.equal(r.status, 400)
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs, max_tokens: 5000 }))
    assert.equal(r.status, 400); assert.equal(r.json.error.code, 'context_length_exceeded')
    await assert.rejects(new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list(), (e: any) => e.status === 401 && e.error?.code === 'invalid_api_key')
    await assert.rejects(openai.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'hi' }] }), (e: any) => e.status === 404)
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs }), { 'x-plexus-trust': 'attested' })
    assert.equal(r.status, 501); assert.match(r.json.error.message, /attested is not supported yet/)
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs }), { 'x-plexus-trust': 'sure' })
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'X-Plexus-Trust')
    // this swarm has no verifier: verified cannot be honoured, and says so
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs }), { 'x-plexus-trust': 'verified' })
    assert.equal(r.status, 503); assert.equal(r.json.error.code, 'verification_unavailable'); assert.match(r.json.error.message, /no verifier/)
    // Anthropic
    r = await post('/v1/messages', '{oops')
    assert.equal(r.status, 400); assert.equal(r.json.type, 'error'); assert.equal(r.json.error.type, 'invalid_request_error')
    r = await post('/v1/messages', body({ model: gw.modelName, messages: msgs }))
    assert.equal(r.status, 400); assert.match(r.json.error.message, /max_tokens/)
    r = await post('/v1/messages', body({ model: 'nope', max_tokens: 5, messages: msgs }))
    assert.equal(r.status, 404); assert.equal(r.json.error.type, 'not_found_error')
    r = await post('/v1/messages', body({ model: gw.modelName, max_tokens: 4096, messages: msgs }))
    assert.equal(r.status, 400); assert.equal(r.json.error.type, 'invalid_request_error')
    await assert.rejects(new Anthropic({ baseURL: base, apiKey: 'wrong', maxRetries: 0 }).messages.create({ model: gw.modelName, max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] }),
      (e: any) => e.status === 401 && e.error?.error?.type === 'authentication_error')
    // Ollama
    r = await post('/api/chat', 'not json')
    assert.equal(r.status, 400); assert.equal(typeof r.json.error, 'string')
    r = await post('/api/generate', body({ model: 'nope', prompt: 'hi' }))
    assert.equal(r.status, 404); assert.match(r.json.error, /not found/)
    r = await post('/api/chat', body({ model: gw.modelName }))
    assert.equal(r.status, 400); assert.match(r.json.error, /messages/)
    r = await post('/api/generate', body({ model: gw.modelName, prompt: 'hi', options: { num_predict: 4000 } }))
    assert.equal(r.status, 400); assert.match(r.json.error, /context/)
    await assert.rejects(new Ollama({ host: base, headers: { Authorization: 'Bearer wrong' } }).list(), (e: any) => e.status_code === 401)
    // ...and it still serves.
    const ok = await openai.chat.completions.create({ model: gw.modelName, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, temperature: 0 })
    assert.equal(ok.usage!.completion_tokens, 3)
    assert.equal(await openSessions(), 0)
  })

  it('a field the gateway does not implement is refused with a 400 naming it; no-op values pass', async () => {
    const body = (o: unknown): string => JSON.stringify(o)
    const msgs = [{ role: 'user', content: 'hi' }]
    let r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs, max_tokens: 2, presence_penalty: 0.5 }))
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'presence_penalty'); assert.equal(r.json.error.code, 'unsupported_parameter')
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs, max_tokens: 2, reasoning_effort: 'high' }))
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'reasoning_effort'); assert.match(r.json.error.message, /reasoning_effort is not supported/)
    // what some clients always send, at the value that changes nothing, and labels
    r = await post('/v1/chat/completions', body({ model: gw.modelName, messages: msgs, max_tokens: 2, presence_penalty: 0, frequency_penalty: 0, logit_bias: {}, user: 'u1', n: 1 }))
    assert.equal(r.status, 200, JSON.stringify(r.json))
    r = await post('/v1/completions', body({ model: gw.modelName, prompt: 'hi', max_tokens: 2, best_of: 3 }))
    assert.equal(r.status, 400); assert.equal(r.json.error.param, 'best_of')
    r = await post('/v1/messages', body({ model: gw.modelName, max_tokens: 2, messages: msgs, thinking: { type: 'enabled', budget_tokens: 1024 } }))
    assert.equal(r.status, 400); assert.equal(r.json.error.type, 'invalid_request_error'); assert.match(r.json.error.message, /thinking is not supported/)
    r = await post('/v1/messages', body({ model: gw.modelName, max_tokens: 2, messages: msgs, metadata: { user_id: 'u1' } }))
    assert.equal(r.status, 200, JSON.stringify(r.json))
    r = await post('/api/chat', body({ model: gw.modelName, messages: msgs, stream: false, options: { num_predict: 2, mirostat: 2 } }))
    assert.equal(r.status, 400); assert.match(r.json.error, /options\.mirostat is not supported/)
    r = await post('/api/generate', body({ model: gw.modelName, prompt: 'hi', stream: false, template: '{{ .Prompt }}' }))
    assert.equal(r.status, 400); assert.match(r.json.error, /template is not supported/)
    r = await post('/api/chat', body({ model: gw.modelName, messages: msgs, stream: false, keep_alive: '5m', options: { num_predict: 2, num_ctx: 4096, repeat_penalty: 1 } }))
    assert.equal(r.status, 200, JSON.stringify(r.json))
  })

  it('plexus-client serve --local answers like the in-process gateway', async () => {
    const child = spawn(process.execPath, [CLIENT_BIN, 'serve', '--local', '--model', modelDir, '--port', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    const exited = new Promise(resolve => child.once('exit', resolve))
    try {
      const ready = await new Promise<any>((resolve, reject) => {
        createInterface({ input: child.stdout }).once('line', (l) => { resolve(JSON.parse(l)) })
        child.once('exit', (code) => { reject(new Error(`serve exited (${code}):\n${err}`)) })
      })
      assert.equal(ready.event, 'ready')
      const client = new OpenAI({ baseURL: `${ready.url}/v1`, apiKey: 'unused', maxRetries: 0 })
      const r = await client.chat.completions.create({ model: ready.model, messages: [{ role: 'user', content: USER }], max_tokens: 12, temperature: 0 })
      assert.equal(r.choices[0].message.content, (await localGreedy(chatIds(USER), 12)).text)
    } finally {
      child.kill('SIGTERM')
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(t)
    }
  })
})
