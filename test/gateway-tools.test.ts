// Tool calls through the gateway with the official OpenAI, Anthropic and Ollama clients, on
// random-weight models the model maker writes with Qwen2.5's, Llama 3.1's and Mistral v3's chat
// templates: forced calls that parse and validate, results that reach the prompt, streamed calls
// equal to non-streamed ones, each family's parser on its real format, and the 400s.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import Anthropic from '@anthropic-ai/sdk'
import { Ollama } from 'ollama'
import type { ChatRequest, Message } from 'ollama'
import { Ajv } from 'ajv'
import { initBackend, compileGrammar } from '@plexus/runtime'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { FAMILIES, familyOf, CallStream, parseOutput, ToolCalls } from '@plexus/gateway'
import type { ToolFamily } from '@plexus/gateway'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { makeModel } from '../scripts/lib/model-maker.ts'
import type { ChatTemplateName } from '../scripts/lib/chat-templates.ts'

const WEATHER = {
  name: 'get_weather',
  description: 'The weather in a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string', enum: ['Paris', 'Oslo', 'Lima'] }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, detailed: { type: 'boolean' } },
    required: ['city', 'unit', 'detailed'],
    additionalProperties: false
  }
}
const TIME = { name: 'get_time', description: 'The local time in a city', parameters: { type: 'object', properties: { city: { type: 'string', enum: ['Paris', 'Oslo'] } }, required: ['city'], additionalProperties: false } }
// Prompts stay short (the tiny vocabulary spells JSON almost byte by byte): two tools where a
// named choice picks one of several, one elsewhere.
const OPENAI_TOOLS = [WEATHER, TIME].map(f => ({ type: 'function' as const, function: f }))
const WEATHER_TOOL = OPENAI_TOOLS.slice(0, 1)
const USER = 'What is the weather in Paris?'
const RESULT = '{"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "clear with a light wind from the west"}'
const validWeather = new Ajv().compile(WEATHER.parameters)

/** The families, the template each is written with, and which clients' streams are checked on it. */
const MODELS: Array<{ template: ChatTemplateName, family: ToolFamily, streams: Array<'anthropic' | 'ollama'> }> = [
  { template: 'qwen2', family: FAMILIES.hermes, streams: ['anthropic'] },
  { template: 'llama3', family: FAMILIES.llama3, streams: ['ollama'] },
  { template: 'mistral', family: FAMILIES.mistral, streams: ['anthropic', 'ollama'] }
]

interface Served { model: OpenModel, gw: Gateway, base: string, openai: OpenAI, anthropic: Anthropic, ollama: Ollama }

describe('tool calls through the gateway (OpenAI, Anthropic and Ollama clients)', function () {
  this.timeout(120_000)
  let dir: string
  const served = new Map<ChatTemplateName, Served>()

  async function serve (template: ChatTemplateName): Promise<void> {
    const out = join(dir, template)
    await makeModel({ shape: 'tiny', out, seed: 11, chatTemplate: template, name: template })
    const model = await openLocal(out)
    const gw = await createGateway({ model })
    const base = await gw.listen(0)
    served.set(template, {
      model,
      gw,
      base,
      openai: new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 }),
      anthropic: new Anthropic({ baseURL: base, apiKey: 'unused', maxRetries: 0 }),
      ollama: new Ollama({ host: base })
    })
  }

  const tokens = (s: Served, text: string): number => s.model.tokenizer!.encode(text, { addSpecialTokens: false }).length

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-tools-'))
    for (const t of ['chatml', 'qwen2', 'llama3', 'mistral'] as const) await serve(t)
  })

  after(async () => {
    for (const s of served.values()) { await s.gw.close(); await s.model.close() }
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  describe('parsers, on each family\'s real format', () => {
    /** The same text fed in one piece and character by character must parse the same. */
    function parsesAlike (family: ToolFamily, text: string): ReturnType<typeof parseOutput> {
      const whole = parseOutput(family.syntax, text)
      const s = new CallStream(family.syntax)
      let content = ''
      const calls = []
      for (const ch of text) { const step = s.push(ch); content += step.content; calls.push(...step.calls) }
      const end = s.finish()
      content += end.content
      calls.push(...end.calls)
      assert.deepEqual({ content: calls.length > 0 && content === '' ? null : content, calls }, whole, `streamed parse of ${JSON.stringify(text)}`)
      return whole
    }

    it('Qwen2.5 / Hermes: <tool_call> blocks, several, with text around them', () => {
      const text = 'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>'
      assert.deepEqual(parsesAlike(FAMILIES.hermes, text), {
        content: 'Let me look that up.',
        calls: [{ name: 'get_weather', arguments: { city: 'Paris', unit: 'celsius' } }, { name: 'get_time', arguments: { city: 'Oslo' } }]
      })
      assert.deepEqual(parsesAlike(FAMILIES.hermes, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'), { content: null, calls: [{ name: 'get_time', arguments: {} }] })
      // A reply may end before its closing tag.
      assert.deepEqual(parsesAlike(FAMILIES.hermes, '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}'), { content: null, calls: [{ name: 'get_time', arguments: { city: 'Paris' } }] })
      // Not JSON inside the tags, or a cut-off call: the text stays content, as written.
      assert.deepEqual(parsesAlike(FAMILIES.hermes, 'a <tool_call>nope</tool_call> b'), { content: 'a <tool_call>nope</tool_call> b', calls: [] })
      assert.deepEqual(parsesAlike(FAMILIES.hermes, 'x <tool_call>\n{"name": "get_ti'), { content: 'x <tool_call>\n{"name": "get_ti', calls: [] })
      assert.deepEqual(parsesAlike(FAMILIES.hermes, 'Sunny, 21 <degrees> today.'), { content: 'Sunny, 21 <degrees> today.', calls: [] })
    })

    it('Llama 3.1 / 3.2: a JSON call with "parameters", bare or after <|python_tag|>', () => {
      const call = { name: 'get_weather', arguments: { city: 'Paris', unit: 'celsius' } }
      assert.deepEqual(parsesAlike(FAMILIES.llama3, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'), { content: null, calls: [call] })
      assert.deepEqual(parsesAlike(FAMILIES.llama3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'), { content: null, calls: [call] })
      assert.deepEqual(parsesAlike(FAMILIES.llama3, ' \n{"name": "get_time", "parameters": {"city": "Oslo"}}'), { content: null, calls: [{ name: 'get_time', arguments: { city: 'Oslo' } }] })
      assert.deepEqual(parsesAlike(FAMILIES.llama3, 'It is sunny in Paris {"really": true}.'), { content: 'It is sunny in Paris {"really": true}.', calls: [] })
      assert.deepEqual(parsesAlike(FAMILIES.llama3, '{"city": "Paris"} is not a call'), { content: '{"city": "Paris"} is not a call', calls: [] })
    })

    it('Mistral v3: [TOOL_CALLS] and a JSON array of calls (the marker itself is a special token)', () => {
      const calls = [{ name: 'get_weather', arguments: { city: 'Lima', unit: 'fahrenheit' } }, { name: 'get_time', arguments: { city: 'Paris' } }]
      const array = '[{"name": "get_weather", "arguments": {"city": "Lima", "unit": "fahrenheit"}}, {"name": "get_time", "arguments": {"city": "Paris"}}]'
      assert.deepEqual(parsesAlike(FAMILIES.mistral, `[TOOL_CALLS] ${array}`), { content: null, calls })
      assert.deepEqual(parsesAlike(FAMILIES.mistral, ` ${array}`), { content: null, calls })
      assert.deepEqual(parsesAlike(FAMILIES.mistral, 'Checking. [TOOL_CALLS] [{"name": "get_time", "arguments": {"city": "Paris"}}]'), { content: 'Checking.', calls: [calls[1]] })
      assert.deepEqual(parsesAlike(FAMILIES.mistral, '[1, 2] are numbers'), { content: '[1, 2] are numbers', calls: [] })
      assert.equal(FAMILIES.mistral.callId!('call_0'), FAMILIES.mistral.callId!('call_0'))
      assert.match(FAMILIES.mistral.callId!('toolu_01abc'), /^[a-zA-Z0-9]{9}$/)
    })

    it('Qwen2.5 / Hermes with tool_choice auto: text passes, and a call once opened must fit the tool', async () => {
      const m = served.get('qwen2')!.model
      const spec = FAMILIES.hermes.lazyCalls!([{ name: WEATHER.name, parameters: WEATHER.parameters }], true)
      const grammar = await compileGrammar(m.tokenizer!, m.config.vocabSize, spec as Parameters<typeof compileGrammar>[2])
      const feed = async (text: string): Promise<void> => {
        const c = await grammar.constraint()
        try { for (const id of m.tokenizer!.encode(text, { addSpecialTokens: false })) c.accept(id) } finally { c.dispose?.() }
      }
      await feed('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima", "unit": "celsius", "detailed": false}}\n</tool_call> Done.')
      await assert.rejects(feed('<tool_call>\n{"name": "get_time", "arguments": {}}'), /does not fit the grammar/)
      await assert.rejects(feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"'), /does not fit the grammar/)
    })

    it('parallel_tool_calls false keeps the first call, streamed or not; tool_choice none parses nothing', () => {
      const text = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'
      const tools = [{ name: TIME.name, parameters: TIME.parameters }]
      const engine = undefined as unknown as ConstructorParameters<typeof ToolCalls>[0] // parsing needs no model
      const single = new ToolCalls(engine, FAMILIES.hermes, { tools, choice: { mode: 'auto' }, parallel: false })
      assert.deepEqual(single.parse(text), { content: null, calls: [{ name: 'get_time', arguments: { city: 'Oslo' } }] })
      const s = single.stream()
      const streamed = [...text].flatMap(ch => s.push(ch).calls).concat(s.finish().calls)
      assert.deepEqual(streamed, [{ name: 'get_time', arguments: { city: 'Oslo' } }])
      const both = new ToolCalls(engine, FAMILIES.hermes, { tools, choice: { mode: 'auto' }, parallel: true })
      assert.equal(both.parse(text).calls.length, 2)
      const none = new ToolCalls(engine, FAMILIES.hermes, { tools, choice: { mode: 'none' }, parallel: true })
      assert.deepEqual(none.parse(text), { content: text, calls: [] })
    })

    it('finds the family from the chat template, and none for a template without tools', () => {
      for (const { template, family } of MODELS) assert.equal(familyOf(served.get(template)!.model.tokenizerConfig), family, template)
      assert.equal(familyOf(served.get('chatml')!.model.tokenizerConfig), undefined)
    })
  })

  /** Checks a forced call and returns its arguments. */
  function checkCall (name: string, args: unknown): Record<string, unknown> {
    assert.equal(name, 'get_weather')
    assert.ok(validWeather(args), `arguments ${JSON.stringify(args)} do not validate: ${JSON.stringify(validWeather.errors)}`)
    return args as Record<string, unknown>
  }

  for (const { template, streams } of MODELS) {
    describe(`round trips on a model with ${template}'s template`, () => {
      it('OpenAI: forced call → tool result → a final answer that saw the result', async () => {
        const s = served.get(template)!
        const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: USER }]
        const first = await s.openai.chat.completions.create({ model: s.gw.modelName, messages, tools: OPENAI_TOOLS, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 120, temperature: 0 })
        const choice = first.choices[0]
        assert.equal(choice.finish_reason, 'tool_calls')
        assert.equal(choice.message.content, null)
        const call = choice.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall
        assert.match(call.id, /^call_/)
        assert.equal(call.type, 'function')
        checkCall(call.function.name, JSON.parse(call.function.arguments))

        messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: RESULT })
        const final = await s.openai.chat.completions.create({ model: s.gw.modelName, messages, tools: OPENAI_TOOLS, max_tokens: 8, temperature: 0 })
        assert.notEqual(final.choices[0].finish_reason, 'tool_calls')
        assert.equal(typeof final.choices[0].message.content, 'string')
        assert.ok(final.usage!.prompt_tokens - first.usage!.prompt_tokens >= tokens(s, RESULT), `prompt grew ${first.usage!.prompt_tokens} → ${final.usage!.prompt_tokens}`)
      })

      it('Anthropic: forced tool_use → tool_result → a final answer that saw the result', async () => {
        const s = served.get(template)!
        const tools = [{ name: WEATHER.name, description: WEATHER.description, input_schema: WEATHER.parameters as Anthropic.Tool.InputSchema }]
        const messages: Anthropic.MessageParam[] = [{ role: 'user', content: USER }]
        // Through a variable: the SDK's types leave out temperature, which the API takes.
        const forced = { model: s.gw.modelName, max_tokens: 120, temperature: 0, messages, tools, tool_choice: { type: 'tool' as const, name: 'get_weather' } }
        const first = await s.anthropic.messages.create(forced)
        assert.equal(first.stop_reason, 'tool_use')
        const use = first.content.find(b => b.type === 'tool_use')
        assert.ok(use != null, JSON.stringify(first.content))
        assert.match(use.id, /^toolu_/)
        checkCall(use.name, use.input)

        messages.push({ role: 'assistant', content: first.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: RESULT }] })
        const answer = { model: s.gw.modelName, max_tokens: 8, temperature: 0, messages, tools }
        const final = await s.anthropic.messages.create(answer)
        assert.notEqual(final.stop_reason, 'tool_use')
        assert.equal(final.content[0].type, 'text')
        assert.ok(final.usage.input_tokens - first.usage.input_tokens >= tokens(s, RESULT), `prompt grew ${first.usage.input_tokens} → ${final.usage.input_tokens}`)
      })

      it('Ollama: forced call (tool_choice extension) → tool message → a final answer that saw the result', async () => {
        const s = served.get(template)!
        const messages: Message[] = [{ role: 'user', content: USER }]
        // Ollama's API has no tool_choice; the gateway takes OpenAI's, and the client passes it through.
        const request = { model: s.gw.modelName, messages, tools: WEATHER_TOOL, tool_choice: 'required', options: { temperature: 0, num_predict: 120 }, stream: false as const }
        const first = await s.ollama.chat(request as ChatRequest & { stream: false })
        const calls = first.message.tool_calls ?? []
        assert.equal(calls.length, 1, JSON.stringify(first.message))
        assert.equal(first.message.content, '')
        assert.equal(first.done_reason, 'stop')
        checkCall(calls[0].function.name, calls[0].function.arguments)

        messages.push(first.message, { role: 'tool', content: RESULT, tool_name: calls[0].function.name })
        const final = await s.ollama.chat({ model: s.gw.modelName, messages, tools: WEATHER_TOOL, options: { temperature: 0, num_predict: 8 }, stream: false })
        assert.equal(final.message.tool_calls, undefined)
        assert.equal(typeof final.message.content, 'string')
        assert.ok(final.prompt_eval_count - first.prompt_eval_count >= tokens(s, RESULT), `prompt grew ${first.prompt_eval_count} → ${final.prompt_eval_count}`)
      })

      it('OpenAI: streamed tool_calls deltas assemble to the non-streamed call (same seed)', async () => {
        const s = served.get(template)!
        const base = { model: s.gw.modelName, messages: [{ role: 'user' as const, content: USER }], tools: WEATHER_TOOL, tool_choice: 'required' as const, max_tokens: 120, temperature: 1, seed: 5 }
        const full = await s.openai.chat.completions.create(base)
        const want = full.choices[0].message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall
        const deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = []
        let finish: string | null = null
        let content = ''
        for await (const chunk of await s.openai.chat.completions.create({ ...base, stream: true })) {
          deltas.push(...(chunk.choices[0]?.delta?.tool_calls ?? []))
          content += chunk.choices[0]?.delta?.content ?? ''
          finish = chunk.choices[0]?.finish_reason ?? finish
        }
        assert.equal(finish, 'tool_calls')
        assert.equal(content, '')
        assert.equal(deltas[0].index, 0)
        assert.match(deltas[0].id!, /^call_/)
        assert.equal(deltas[0].type, 'function')
        assert.equal(deltas[0].function!.arguments, '')
        assert.ok(deltas.every(d => d.index === 0))
        assert.deepEqual({ name: deltas[0].function!.name, arguments: deltas.map(d => d.function?.arguments ?? '').join('') }, want.function)
        checkCall(want.function.name, JSON.parse(want.function.arguments))
      })

      if (streams.includes('anthropic')) {
        it('Anthropic: a streamed tool_use block (input_json_delta) equals the non-streamed one', async () => {
          const s = served.get(template)!
          // Anthropic's API has no seed: greedy, so both runs give the same call.
          const req = { model: s.gw.modelName, max_tokens: 120, temperature: 0, messages: [{ role: 'user' as const, content: USER }], tools: [{ name: WEATHER.name, input_schema: WEATHER.parameters as Anthropic.Tool.InputSchema }], tool_choice: { type: 'any' as const } }
          const full = await s.anthropic.messages.create(req)
          const events: Anthropic.RawMessageStreamEvent[] = []
          for await (const e of await s.anthropic.messages.create({ ...req, stream: true })) events.push(e)
          const start = events.find(e => e.type === 'content_block_start' && e.content_block.type === 'tool_use') as Anthropic.RawContentBlockStartEvent
          const block = start.content_block as Anthropic.ToolUseBlock
          assert.deepEqual(block.input, {})
          assert.match(block.id, /^toolu_/)
          const json = events.flatMap(e => e.type === 'content_block_delta' && e.delta.type === 'input_json_delta' ? [e.delta.partial_json] : []).join('')
          assert.ok(events.some(e => e.type === 'content_block_stop' && e.index === start.index))
          assert.ok(events.some(e => e.type === 'message_delta' && e.delta.stop_reason === 'tool_use'))
          const use = full.content.find(b => b.type === 'tool_use')!
          assert.deepEqual({ name: block.name, input: JSON.parse(json) }, { name: use.name, input: use.input })
          checkCall(use.name, use.input)
        })
      }

      if (streams.includes('ollama')) {
        it('Ollama: streamed tool_calls equal the non-streamed ones (same seed)', async () => {
          const s = served.get(template)!
          const req = { model: s.gw.modelName, messages: [{ role: 'user', content: USER }], tools: WEATHER_TOOL, tool_choice: 'required', options: { temperature: 1, seed: 5, num_predict: 120 } }
          const full = await s.ollama.chat({ ...req, stream: false } as ChatRequest & { stream: false })
          const streamed = []
          for await (const part of await s.ollama.chat({ ...req, stream: true } as ChatRequest & { stream: true })) streamed.push(...(part.message.tool_calls ?? []))
          assert.equal(streamed.length, 1)
          assert.deepEqual(streamed, full.message.tool_calls)
          checkCall(streamed[0].function.name, streamed[0].function.arguments)
        })
      }
    })
  }

  it('tool_choice none still renders the tools, and answers with text', async () => {
    const s = served.get('qwen2')!
    const req = { model: s.gw.modelName, messages: [{ role: 'user' as const, content: USER }], tools: WEATHER_TOOL, max_tokens: 4, temperature: 0 }
    const none = await s.openai.chat.completions.create({ ...req, tool_choice: 'none' })
    const bare = await s.openai.chat.completions.create({ model: req.model, messages: req.messages, max_tokens: 4, temperature: 0 })
    assert.equal(typeof none.choices[0].message.content, 'string')
    assert.equal(none.choices[0].message.tool_calls, undefined)
    assert.ok(none.usage!.prompt_tokens > bare.usage!.prompt_tokens + tokens(s, JSON.stringify(WEATHER.parameters)))
  })

  describe('refusals', () => {
    it('a model whose template has no tool support answers a request with tools with a 400 saying so', async () => {
      const s = served.get('chatml')!
      await assert.rejects(
        s.openai.chat.completions.create({ model: s.gw.modelName, messages: [{ role: 'user', content: USER }], tools: OPENAI_TOOLS, max_tokens: 4 }),
        (err: any) => err.status === 400 && /does not support tools/.test(err.message) && err.param === 'tools' && err.code === 'tools_not_supported')
      await assert.rejects(
        s.anthropic.messages.create({ model: s.gw.modelName, max_tokens: 4, messages: [{ role: 'user', content: USER }], tools: [{ name: 'get_time', input_schema: { type: 'object' } }] }),
        (err: any) => err.status === 400 && err.error?.error?.type === 'invalid_request_error' && /does not support tools/.test(err.message))
      await assert.rejects(
        s.ollama.chat({ model: s.gw.modelName, messages: [{ role: 'user', content: USER }], tools: OPENAI_TOOLS, stream: false }),
        (err: any) => err.status_code === 400 && /does not support tools/.test(err.error))
    })

    it('bad tools and tool choices get a 400 naming the field', async () => {
      const s = served.get('qwen2')!
      const ask = async (extra: Record<string, unknown>): Promise<any> => {
        const r = await fetch(`${s.base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: s.gw.modelName, messages: [{ role: 'user', content: USER }], max_tokens: 4, ...extra }) })
        return { status: r.status, ...(await r.json() as any).error }
      }
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ tools: [{ type: 'function', function: { description: 'no name', parameters: { type: 'object' } } }] }, 'tools[0].function.name'],
        [{ tools: [{ type: 'function', function: { name: 'has space', parameters: { type: 'object' } } }] }, 'tools[0].function.name'],
        [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'objekt' } } }] }, 'tools[0].function.parameters.type'],
        [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'strin' } } } } }] }, 'tools[0].function.parameters.properties.a.type'],
        [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: [] } } }] }, 'tools[0].function.parameters.properties'],
        [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type'],
        [{ tools: OPENAI_TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name'],
        [{ tools: OPENAI_TOOLS, tool_choice: 'sometimes' }, 'tool_choice'],
        [{ tool_choice: 'required' }, 'tool_choice'],
        [{ messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{not json' } }] }] }, 'messages[0].tool_calls[0].function.arguments'],
        [{ messages: [{ role: 'tool', content: 'x' }] }, 'messages[0].tool_call_id']
      ]
      for (const [extra, param] of cases) {
        const e = await ask(extra)
        assert.equal(e.status, 400, JSON.stringify(extra))
        assert.equal(e.param, param, `${JSON.stringify(extra)}: ${e.message}`)
        assert.ok(e.message.includes(param), e.message)
      }
      await assert.rejects(
        s.anthropic.messages.create({ model: s.gw.modelName, max_tokens: 4, messages: [{ role: 'user', content: USER }], tools: [{ name: 'get_time' } as Anthropic.Tool] }),
        (err: any) => err.status === 400 && /tools\.0\.input_schema/.test(err.message))
      await assert.rejects(
        s.anthropic.messages.create({ model: s.gw.modelName, max_tokens: 4, messages: [{ role: 'user', content: USER }], tools: [{ name: 'get_time', input_schema: { type: 'object' } }], tool_choice: { type: 'tool', name: 'other' } }),
        (err: any) => err.status === 400 && /tool_choice\.name/.test(err.message))
    })
  })
})
