// Structured output by constrained decoding: OpenAI's response_format and Ollama's format through
// the official clients, on a random-weight model sampled at temperature 1. Whatever the weights,
// every finished output must parse and validate against its schema.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import { Ollama } from 'ollama'
import { Ajv } from 'ajv'
import { initBackend, compileGrammar, vocabularyOf, GrammarError } from '@plexus/runtime'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { makeModel } from '../scripts/lib/model-maker.ts'

// Every string, number and list is bounded, so any path through a schema ends within MAX_TOKENS
// (a byte-level token may be a single byte: a 4-byte character can take 4 tokens).
const PERSON = {
  type: 'object',
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 8 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    active: { type: 'boolean' },
    color: { enum: ['red', 'green', 'blue'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 4 }, maxItems: 3 }
  },
  required: ['name', 'age', 'active', 'color', 'tags'],
  additionalProperties: false
}
const ORDER = {
  type: 'object',
  properties: {
    id: { type: 'integer', minimum: 1, maximum: 9999 },
    status: { type: 'string', enum: ['open', 'paid', 'shipped'] },
    items: {
      type: 'array',
      minItems: 1,
      maxItems: 2,
      items: {
        type: 'object',
        properties: { sku: { type: 'string', maxLength: 6 }, qty: { type: 'integer', minimum: 1, maximum: 9 } },
        required: ['sku', 'qty'],
        additionalProperties: false
      }
    },
    note: { type: 'string', maxLength: 10 }
  },
  required: ['id', 'status', 'items'],
  additionalProperties: false
}
const READING = {
  type: 'object',
  properties: {
    sensor: { const: 'probe-1' },
    value: { anyOf: [{ type: 'integer', minimum: -50, maximum: 50 }, { type: 'null' }] },
    flags: {
      type: 'object',
      properties: { calibrated: { type: 'boolean' }, unit: { enum: ['C', 'F'] } },
      required: ['calibrated', 'unit'],
      additionalProperties: false
    }
  },
  required: ['sensor', 'value', 'flags'],
  additionalProperties: false
}
const SCHEMAS = [PERSON, ORDER, READING]
const MAX_TOKENS = 200
const USER = 'Describe one record as JSON.'

describe('structured output (response_format, format) by constrained decoding', function () {
  this.timeout(120_000)
  let dir: string
  let local: OpenModel
  let gw: Gateway
  let base: string
  let openai: OpenAI
  let ollama: Ollama
  const ajv = new Ajv({ strict: false })
  const validators = SCHEMAS.map(s => ajv.compile(s))

  const chat = async (content: string, seed: number, responseFormat?: OpenAI.ChatCompletionCreateParams['response_format']): Promise<OpenAI.ChatCompletion> =>
    await openai.chat.completions.create({
      model: gw.modelName, messages: [{ role: 'user', content }], max_tokens: MAX_TOKENS, temperature: 1, seed, response_format: responseFormat
    })
  const schemaFormat = (i: number): OpenAI.ResponseFormatJSONSchema =>
    ({ type: 'json_schema', json_schema: { name: `schema_${i}`, schema: SCHEMAS[i], strict: true } })

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-structured-'))
    await makeModel({ shape: 'tiny', out: join(dir, 'tiny'), seed: 7 })
    local = await openLocal(join(dir, 'tiny'))
    gw = await createGateway({ model: local })
    base = await gw.listen(0)
    openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0 })
    ollama = new Ollama({ host: base })
  })

  after(async () => {
    await gw?.close()
    await local?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('json_schema: 50 sampled generations (temperature 1, seeds 0..49) all finish, parse and validate', async () => {
    const failures: string[] = []
    for (let seed = 0; seed < 50; seed++) {
      const k = seed % SCHEMAS.length
      const r = await chat(USER, seed, schemaFormat(k))
      const text = r.choices[0].message.content ?? ''
      if (r.choices[0].finish_reason !== 'stop') { failures.push(`seed ${seed}: finished by ${r.choices[0].finish_reason}: ${text}`); continue }
      let value: unknown
      try { value = JSON.parse(text) } catch (err) { failures.push(`seed ${seed}: not JSON (${(err as Error).message}): ${text}`); continue }
      if (!validators[k](value)) failures.push(`seed ${seed}: ${ajv.errorsText(validators[k].errors)}: ${text}`)
    }
    assert.deepEqual(failures, [])
  })

  it('without a response_format the same requests give no valid JSON (the constraint is what makes it)', async () => {
    const valid: string[] = []
    for (let seed = 0; seed < 6; seed++) {
      const text = (await chat(USER, seed)).choices[0].message.content ?? ''
      try { if (validators[seed % SCHEMAS.length](JSON.parse(text))) valid.push(text) } catch {}
    }
    assert.deepEqual(valid, [])
  })

  it('streamed output equals non-streamed for the same seed', async () => {
    for (const seed of [3, 4]) {
      const full = await chat(USER, seed, schemaFormat(seed % SCHEMAS.length))
      const stream = await openai.chat.completions.create({
        model: gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: MAX_TOKENS, temperature: 1, seed, response_format: schemaFormat(seed % SCHEMAS.length), stream: true
      })
      let text = ''
      let finish: string | null = null
      for await (const c of stream) { text += c.choices[0]?.delta?.content ?? ''; finish = c.choices[0]?.finish_reason ?? finish }
      assert.equal(text, full.choices[0].message.content)
      assert.equal(finish, 'stop')
    }
  })

  it('json_object: every finished output is a JSON object; /v1/completions takes response_format too', async () => {
    let finished = 0
    for (let seed = 0; seed < 6; seed++) {
      const r = await chat(USER, seed, { type: 'json_object' })
      if (r.choices[0].finish_reason !== 'stop') continue
      finished++
      const value = JSON.parse(r.choices[0].message.content ?? '')
      assert.ok(value != null && typeof value === 'object' && !Array.isArray(value), r.choices[0].message.content!)
    }
    assert.ok(finished > 0, 'no json_object generation finished')
    const c = await openai.completions.create({ model: gw.modelName, prompt: 'Record:', max_tokens: MAX_TOKENS, temperature: 1, seed: 1, response_format: schemaFormat(0) } as OpenAI.CompletionCreateParamsNonStreaming)
    assert.ok(validators[0](JSON.parse(c.choices[0].text)), c.choices[0].text)
  })

  it('Ollama format: a JSON schema on /api/chat and /api/generate (streamed), and "json"', async () => {
    for (let seed = 0; seed < 4; seed++) {
      const r = await ollama.chat({ model: gw.modelName, messages: [{ role: 'user', content: USER }], format: ORDER, options: { temperature: 1, seed, num_predict: MAX_TOKENS }, stream: false })
      assert.equal(r.done_reason, 'stop')
      assert.ok(validators[1](JSON.parse(r.message.content)), r.message.content)
    }
    let text = ''
    for await (const part of await ollama.generate({ model: gw.modelName, prompt: USER, format: READING, options: { temperature: 1, seed: 9, num_predict: MAX_TOKENS }, stream: true })) text += part.response
    assert.ok(validators[2](JSON.parse(text)), text)
    const j = await ollama.generate({ model: gw.modelName, prompt: USER, format: 'json', options: { temperature: 1, seed: 1, num_predict: MAX_TOKENS } })
    if (j.done_reason === 'stop') assert.equal(typeof JSON.parse(j.response ?? ''), 'object')
  })

  it('a bad schema or format is a 400 naming response_format / format, in each API\'s shape', async () => {
    const bad = async (responseFormat: unknown, words: RegExp): Promise<void> => {
      await assert.rejects(chat(USER, 0, responseFormat as OpenAI.ResponseFormatJSONObject), (err: InstanceType<typeof OpenAI.APIError>) => {
        assert.equal(err.status, 400)
        assert.equal((err.error as { param?: string }).param, 'response_format')
        assert.match(err.message, /response_format/)
        assert.match(err.message, words)
        return true
      })
    }
    await bad({ type: 'json_schema', json_schema: { name: 'x', schema: { type: 'strin' } } }, /Unsupported type "strin"/)
    await bad({ type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: 5 } } }, /properties must be an object/)
    await bad({ type: 'json_schema', json_schema: { name: 'x' } }, /schema is required/)
    // compiled by xgrammar but not enforced, or not exactly: refused rather than broken
    await bad({ type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { allOf: [{ type: 'integer' }] } } } } }, /"allOf" at #\/properties\/a is not supported/)
    await bad({ type: 'json_schema', json_schema: { name: 'x', schema: { type: 'number', maximum: 3 } } }, /"maximum" at # is supported on integers only/)
    await bad({ type: 'yaml' }, /"text", "json_object" or "json_schema"/)
    for (const format of [{ type: 'object', properties: { a: { type: 'strin' } } }, 'yaml']) {
      await assert.rejects(ollama.chat({ model: gw.modelName, messages: [{ role: 'user', content: USER }], format, stream: false }), (err: Error & { status_code?: number }) => {
        assert.equal(err.status_code, 400)
        assert.match(err.message, /^format[: ]/)
        return true
      })
    }
    // The gateway still serves after the grammar engine refused a schema.
    const ok = await chat(USER, 5, schemaFormat(2))
    assert.ok(validators[2](JSON.parse(ok.choices[0].message.content ?? '')))
  })

  it('grammar module: masks ids past the vocabulary, rewinds, names bad specs, reads SentencePiece vocabularies', async () => {
    const tok = local.tokenizer!
    const V = tok.vocabSize + 8
    const g = await compileGrammar(tok, V, { type: 'json_schema', schema: { enum: ['yes', 'no'] } })
    const c = await g.constraint()
    const row = new Float32Array(V)
    await c.mask(row)
    assert.ok(row.subarray(tok.vocabSize).every(x => x === -Infinity), 'padding ids are masked')
    const allowed = [...row.keys()].filter(i => row[i] === 0)
    assert.ok(allowed.length > 0 && allowed.every(i => '"'.startsWith(tok.decode([i])) || tok.decode([i]).startsWith('"')))
    const ids = tok.encode('"yes"', { addSpecialTokens: false })
    for (const id of ids) c.accept(id)
    c.rewind(1) // back to after the first token: the rest again, then the end token
    for (const id of ids.slice(1)) c.accept(id)
    c.accept(tok.eosTokenIds[0])
    assert.equal(c.done(), true)
    c.dispose?.()
    await assert.rejects(compileGrammar(tok, V, { type: 'ebnf', grammar: 'root ::= item\n' }), (err: GrammarError) => err.code === 'invalid_grammar' && /Rule "item" is not defined/.test(err.message))

    // A structural tag (the shape of a forced tool call): exactly the tag, its content held to a schema.
    const tag = await compileGrammar(tok, V, { type: 'structural_tag', format: { type: 'tag', begin: '<call>', content: { type: 'json_schema', json_schema: { enum: ['yes'] } }, end: '</call>' } })
    const t = await tag.constraint()
    for (const id of tok.encode('<call>"yes"</call>', { addSpecialTokens: false })) t.accept(id)
    t.accept(tok.eosTokenIds[0])
    assert.equal(t.done(), true)
    t.dispose?.()
    const t2 = await tag.constraint()
    assert.throws(() => { for (const id of tok.encode('<call>"no"', { addSpecialTokens: false })) t2.accept(id) }, (err: GrammarError) => err.code === 'token_rejected')
    t2.dispose?.()

    const sp = vocabularyOf({
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
      model: { type: 'BPE', byte_fallback: true, vocab: { '<unk>': 0, '<s>': 1, '<0x0A>': 2, '▁a': 4 } },
      added_tokens: [{ id: 1, content: '<s>', special: true }]
    })
    assert.deepEqual(sp, { tokens: ['<unk>', '<s>', '<0x0A>', '', '▁a'], specialIds: [1], encoding: 'byte_fallback', prependSpace: true })
  })
})
