// The gateway with speculative decoding (serve --speculate): the same output as plain decoding,
// drafts accepted on text that repeats, and the requests speculation cannot serve decoded plainly.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import { Ajv } from 'ajv'
import { initBackend } from '@plexus/runtime'
import { createGateway, TRUST_HEADER } from '@plexus/gateway'
import type { Gateway, GatewayModel } from '@plexus/gateway'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { makeModel } from '../scripts/lib/model-maker.ts'

// a continuation that repeats the prompt's text is what prompt lookup drafts (the tied random
// model below answers this one with runs of a repeated byte)
const REPEATING = 'a a a a a a a a a a a a a a a a'
const POINT = {
  type: 'object',
  properties: { x: { type: 'integer', minimum: 0, maximum: 99 }, label: { type: 'string', maxLength: 6 } },
  required: ['x', 'label'],
  additionalProperties: false
}

describe('gateway: speculative decoding (--speculate, prompt lookup)', function () {
  this.timeout(300_000)
  let dir: string
  let local: OpenModel
  let plain: Gateway
  let spec: Gateway
  let plainApi: OpenAI
  let specApi: OpenAI
  let specBase: string
  let fallback: Gateway
  let fallbackBase: string

  const accepted = async (gw: Gateway): Promise<number> => {
    const m = await gw.metrics.draftTokens.get()
    return m.values.find(v => v.labels.result === 'accepted')?.value ?? 0
  }
  const chat = async (api: OpenAI, extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {}): Promise<OpenAI.ChatCompletion> =>
    await api.chat.completions.create({ model: plain.modelName, messages: [{ role: 'user', content: REPEATING }], max_tokens: 48, temperature: 0, ...extra })

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-gw-spec-'))
    // tied embeddings: a random model that repeats itself now and then, as prompt lookup needs
    await makeModel({ shape: 'tiny', out: join(dir, 'tiny'), seed: 7, tie: true })
    // one model behind both gateways: each gateway has its own engine and metrics
    local = await openLocal(join(dir, 'tiny'))
    plain = await createGateway({ model: local, modelName: 'tiny' })
    spec = await createGateway({ model: local, modelName: 'tiny', speculate: { k: 4 } })
    plainApi = new OpenAI({ baseURL: `${await plain.listen(0)}/v1`, apiKey: 'none', maxRetries: 0 })
    specBase = await spec.listen(0)
    specApi = new OpenAI({ baseURL: `${specBase}/v1`, apiKey: 'none', maxRetries: 0 })
    // sessions that cannot roll back (speculative.ts refuses them) and take any trust level
    const rigid: GatewayModel = {
      config: local.config,
      head: local.head,
      tokenizer: local.tokenizer,
      tokenizerConfig: local.tokenizerConfig,
      session: async (maxLength) => {
        const s = await local.session(maxLength)
        return { forward: async (h, t) => await s.forward(h, t), close: async () => { await s.close() } }
      }
    }
    fallback = await createGateway({ model: rigid, modelName: 'tiny', speculate: { k: 4 } })
    fallbackBase = await fallback.listen(0)
  })

  after(async () => {
    await plain?.close()
    await spec?.close()
    await fallback?.close()
    await local?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('greedy: exactly the text of plain decoding, with drafts accepted', async () => {
    const a = await chat(plainApi)
    const b = await chat(specApi)
    assert.ok(a.choices[0].message.content != null && a.choices[0].message.content.length > 0)
    assert.equal(b.choices[0].message.content, a.choices[0].message.content)
    assert.equal(b.usage?.completion_tokens, a.usage?.completion_tokens)
    assert.equal(await accepted(plain), 0)
    assert.ok(await accepted(spec) > 0, 'prompt lookup drafts accepted on repeating text')
    const text = await (await fetch(`${specBase}/metrics`)).text()
    assert.match(text, /plexus_gateway_draft_tokens_total\{result="accepted"\} [1-9]/)
  })

  it('structured output (json_schema) works with speculation configured, as plain decoding does', async () => {
    const format: OpenAI.ResponseFormatJSONSchema = { type: 'json_schema', json_schema: { name: 'point', schema: POINT, strict: true } }
    const a = await chat(plainApi, { response_format: format, max_tokens: 64 })
    const b = await chat(specApi, { response_format: format, max_tokens: 64 })
    const validate = new Ajv({ strict: false }).compile(POINT)
    assert.ok(validate(JSON.parse(b.choices[0].message.content!)), b.choices[0].message.content!)
    assert.equal(b.choices[0].message.content, a.choices[0].message.content)
  })

  it('logprobs come with speculative tokens', async () => {
    const a = await chat(plainApi, { logprobs: true, top_logprobs: 2 })
    const b = await chat(specApi, { logprobs: true, top_logprobs: 2 })
    assert.equal(b.choices[0].message.content, a.choices[0].message.content)
    assert.deepEqual(b.choices[0].logprobs?.content?.map(t => t.token), a.choices[0].logprobs?.content?.map(t => t.token))
    assert.equal(b.choices[0].logprobs?.content?.[0].top_logprobs.length, 2)
  })

  it('requests speculation cannot serve decode plainly: verified trust, a session without rollback', async () => {
    const expected = (await chat(plainApi)).choices[0].message.content
    for (const trust of ['verified', 'fast']) {
      const res = await fetch(`${fallbackBase}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [TRUST_HEADER]: trust },
        body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: REPEATING }], max_tokens: 48, temperature: 0 })
      })
      assert.equal(res.status, 200, await res.clone().text())
      assert.equal((await res.json() as OpenAI.ChatCompletion).choices[0].message.content, expected, trust)
    }
    assert.equal(await accepted(fallback), 0, 'no drafts')
  })
})
