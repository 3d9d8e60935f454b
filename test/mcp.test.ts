// The MCP server driven by the SDK's own client: over stdio (`plexus-client mcp`, a child process)
// and over streamable HTTP (the gateway's /mcp). Same text as local greedy generation, the listing
// and status tools, tool errors, the API key, DNS-rebinding refusal, sessions and cancellation.
import assert from 'node:assert/strict'
import { request as httpRequest } from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import { initBackend, generate, applyChatTemplate } from '@plexus/runtime'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { openLocal } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import { CLIENT_BIN } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'

const KEY = 'mcp-test-key'
const PROMPT = 'The swarm'
const USER = 'Tell me about the swarm.'
const TOOLS = ['chat', 'generate', 'list_models', 'swarm_status']

describe('MCP server (stdio and streamable HTTP)', function () {
  this.timeout(120_000)
  let dir: string
  let modelDir: string
  let backend: string
  let local: OpenModel
  let gw: Gateway
  let base: string

  async function localGreedy (ids: number[], maxTokens: number): Promise<{ ids: number[], text: string }> {
    const session = await local.session(ids.length + maxTokens)
    try {
      const r = await generate(local.head, session, ids, { maxTokens, temperature: 0, eosTokenIds: local.tokenizer!.eosTokenIds })
      return { ids: r.tokenIds, text: local.tokenizer!.decode(r.tokenIds, { skipSpecialTokens: true }) }
    } finally { await session.close() }
  }
  const textIds = (text: string): number[] => local.tokenizer!.encode(text, { addSpecialTokens: true })
  const chatIds = (content: string): number[] =>
    local.tokenizer!.encode(applyChatTemplate(local.tokenizerConfig!, [{ role: 'user', content }], { addGenerationPrompt: true }), { addSpecialTokens: false })

  const call = async (client: Client, name: string, args: Record<string, unknown> = {}, signal?: AbortSignal): Promise<CallToolResult> =>
    await client.callTool({ name, arguments: args }, undefined, { signal }) as CallToolResult
  const textOf = (r: CallToolResult): string => r.content.map(c => c.type === 'text' ? c.text : '').join('')

  /** What both transports must do alike. */
  async function exercise (client: Client, mode: 'local' | undefined): Promise<void> {
    const tools = await client.listTools()
    assert.deepEqual(tools.tools.map(t => t.name).sort(), TOOLS)
    assert.ok(tools.tools.every(t => t.description != null && t.inputSchema.type === 'object'))

    const want = await localGreedy(textIds(PROMPT), 12)
    const g = await call(client, 'generate', { prompt: PROMPT, max_tokens: 12, temperature: 0 })
    assert.notEqual(g.isError, true, textOf(g))
    assert.equal(textOf(g), want.text)
    assert.deepEqual(g.structuredContent, { model: 'tiny', text: want.text, finish_reason: 'length', prompt_tokens: textIds(PROMPT).length, completion_tokens: want.ids.length })

    const wantChat = await localGreedy(chatIds(USER), 10)
    const c = await call(client, 'chat', { model: 'tiny', messages: [{ role: 'user', content: USER }], max_tokens: 10, temperature: 0 })
    assert.equal(textOf(c), wantChat.text)
    assert.equal(c.structuredContent?.completion_tokens, wantChat.ids.length)

    const list = await call(client, 'list_models')
    const models = list.structuredContent?.models as any[]
    assert.equal(models.length, 1)
    assert.equal(models[0].name, 'tiny')
    assert.equal(models[0].complete, true)
    assert.equal(models[0].blocks, 3)
    assert.equal(models[0].context_length, local.config.maxPositions)
    assert.match(textOf(list), /^tiny: complete; 3 blocks/)

    const status = await call(client, 'swarm_status')
    const s = status.structuredContent as any
    assert.equal(s.mode, mode)
    assert.equal(s.open_sessions, 0)
    assert.ok(s.generated_tokens >= want.ids.length + wantChat.ids.length, JSON.stringify(s))
    assert.equal(s.models[0].name, 'tiny')

    // errors are tool results the model can read, naming what is served
    const bad = await call(client, 'generate', { model: 'nope', prompt: PROMPT })
    assert.equal(bad.isError, true)
    assert.match(textOf(bad), /nope.*does not exist.*"tiny"/)
    const tooLong = await call(client, 'generate', { prompt: PROMPT, max_tokens: 100_000 })
    assert.equal(tooLong.isError, true)
    assert.match(textOf(tooLong), /context/)
    const hot = await call(client, 'chat', { messages: [{ role: 'user', content: USER }], temperature: 5 })
    assert.equal(hot.isError, true)
    assert.match(textOf(hot), /temperature/)
  }

  before(async () => {
    backend = await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-mcp-'))
    modelDir = join(dir, 'tiny')
    await makeModel({ shape: 'tiny', out: modelDir, seed: 7 })
    local = await openLocal(modelDir)
    gw = await createGateway({ model: local, modelName: 'tiny', apiKey: KEY })
    base = await gw.listen(0)
  })

  after(async () => {
    await gw?.close()
    await local?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('stdio: plexus-client mcp answers the SDK client like local generation, and exits when its stdin ends', async () => {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [CLIENT_BIN, 'mcp', '--local', '--model', modelDir, '--backend', backend],
      env: { ...process.env } as Record<string, string>,
      stderr: 'pipe'
    })
    let err = ''
    transport.stderr?.on('data', (d: Buffer) => { err += d.toString() })
    const client = new Client({ name: 'plexus-test', version: '1.0.0' })
    try {
      await client.connect(transport)
      await exercise(client, 'local')
      assert.match(err, /MCP server on stdio: tiny/)
      const pid = transport.pid
      assert.ok(pid != null)
      // close() ends the child's stdin; it must exit on its own, before the SDK's SIGTERM (2 s later)
      const t0 = Date.now()
      await client.close()
      assert.ok(Date.now() - t0 < 1900, `plexus-client mcp took ${Date.now() - t0} ms to exit after its stdin ended`)
      assert.throws(() => process.kill(pid, 0), /ESRCH/)
    } catch (e) {
      throw new Error(`${(e as Error).message}\nstderr of plexus-client mcp:\n${err}`, { cause: e })
    } finally {
      await client.close()
    }
  })

  it('streamable HTTP: /mcp answers the SDK client with the API key, in a session it can end', async () => {
    const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: { authorization: `Bearer ${KEY}` } } })
    const client = new Client({ name: 'plexus-test', version: '1.0.0' })
    await client.connect(transport)
    try {
      await exercise(client, undefined)
      const sessionId = transport.sessionId
      assert.ok(sessionId != null)
      await transport.terminateSession()
      const r = await fetch(`${base}/mcp`, {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId },
        body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' })
      })
      assert.equal(r.status, 404)
      assert.match(((await r.json()) as any).error.message, /not found/)
    } finally {
      await client.close()
    }
  })

  it('streamable HTTP: a cancelled call stops its generation and frees its session', async () => {
    const client = new Client({ name: 'plexus-test', version: '1.0.0' })
    await client.connect(new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: { 'x-api-key': KEY } } }))
    try {
      // uncancelled, this generation runs until the model's end-of-sequence token
      const full = await localGreedy(chatIds(USER), 1500)
      assert.ok(full.ids.length > 50, `too short to cancel: ${full.ids.length} tokens`)
      const tokens = async (): Promise<number> => (await gw.metrics.generatedTokens.get()).values[0]?.value ?? 0
      const before = await tokens()
      const ac = new AbortController()
      const running = call(client, 'chat', { messages: [{ role: 'user', content: USER }], max_tokens: 1500, temperature: 0 }, ac.signal)
      const started = Date.now()
      while (await tokens() < before + 3) {
        assert.ok(Date.now() - started < 20_000, 'the generation never started')
        await new Promise(resolve => setTimeout(resolve, 2))
      }
      ac.abort()
      await assert.rejects(running, /abort/i)
      for (;;) {
        if ((await gw.metrics.openSessions.get()).values[0].value === 0) break
        assert.ok(Date.now() - started < 20_000, 'the cancelled generation still holds its session')
        await new Promise(resolve => setTimeout(resolve, 20))
      }
      const generated = await tokens() - before
      assert.ok(generated < full.ids.length, `the cancelled call ran to the end (${generated} tokens)`)
      // and the session still serves
      const r = await call(client, 'generate', { prompt: PROMPT, max_tokens: 2, temperature: 0 })
      assert.equal(r.structuredContent?.completion_tokens, 2)
    } finally {
      await client.close()
    }
  })

  // found by the fuzzer (scripts/fuzz.ts): the transport answers by request id, so the second of
  // two calls with one id took the first one's answer and the first HTTP request hung forever
  it('streamable HTTP: a request reusing the id of one still in progress is refused, and both requests end', async () => {
    const h = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
    const init = await fetch(`${base}/mcp`, { method: 'POST', headers: h, body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-03-26', capabilities: {}, clientInfo: { name: 'plexus-test', version: '1' } } }) })
    await init.text()
    const hs = { ...h, 'mcp-session-id': init.headers.get('mcp-session-id')! }
    await (await fetch(`${base}/mcp`, { method: 'POST', headers: hs, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) })).text()
    // 64 tokens each: the two calls overlap, whichever arrives first
    const generate = async (prompt: string, maxTokens = 64): Promise<[number, string]> => {
      const r = await fetch(`${base}/mcp`, { method: 'POST', headers: hs, body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'generate', arguments: { prompt, max_tokens: maxTokens } } }), signal: AbortSignal.timeout(30_000) })
      return [r.status, await r.text()]
    }
    const answers = await Promise.all([generate('one'), generate('two')])
    assert.deepEqual(answers.map(a => a[0]).sort(), [200, 400])
    assert.match(answers.find(a => a[0] === 400)![1], /request id 3 is already in progress/)
    // once the first ended, its id may be used again
    assert.equal((await generate('three', 4))[0], 200)
  })

  it('streamable HTTP: sessions are bounded, and an idle one expires to make room', async () => {
    const small = await createGateway({ model: local, modelName: 'tiny', mcp: { maxSessions: 1, idleTimeoutMs: 300 } })
    const url = new URL(`${await small.listen(0)}/mcp`)
    const first = new Client({ name: 'plexus-test', version: '1.0.0' })
    const second = new Client({ name: 'plexus-test', version: '1.0.0' })
    try {
      await first.connect(new StreamableHTTPClientTransport(url))
      await assert.rejects(second.connect(new StreamableHTTPClientTransport(url)), /503|too many MCP sessions/)
      await new Promise(resolve => setTimeout(resolve, 400))
      await second.connect(new StreamableHTTPClientTransport(url))
      assert.equal((await call(second, 'swarm_status')).structuredContent?.mcp_sessions, 1)
      // the expired session is gone: its client is told to start over
      await assert.rejects(first.listTools(), /404|not found/)
    } finally {
      await first.close()
      await second.close()
      await small.close()
    }
  })

  it('streamable HTTP: refused without the API key, and for a foreign Host or Origin (DNS rebinding)', async () => {
    const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
    const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
    const noKey = await fetch(`${base}/mcp`, { method: 'POST', headers, body: init })
    assert.equal(noKey.status, 401)
    assert.match(((await noKey.json()) as any).error.message, /missing API key/)
    const client = new Client({ name: 'plexus-test', version: '1.0.0' })
    await assert.rejects(client.connect(new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: { authorization: 'Bearer wrong' } } })), /401|Incorrect API key/)

    const { port } = new URL(base)
    const raw = async (extra: Record<string, string>): Promise<{ status: number, body: any }> => await new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/mcp', method: 'POST', headers: { ...headers, authorization: `Bearer ${KEY}`, ...extra } }, (res) => {
        let text = ''
        res.on('data', (d: Buffer) => { text += d.toString() })
        // an accepted initialize answers as an event stream; refusals are JSON
        res.on('end', () => { resolve({ status: res.statusCode!, body: /json/.test(res.headers['content-type'] ?? '') ? JSON.parse(text) : text }) })
      })
      req.on('error', reject)
      req.end(init)
    })
    const host = await raw({ host: `evil.example:${port}` })
    assert.equal(host.status, 403)
    assert.match(host.body.error.message, /refused Host "evil.example/)
    const origin = await raw({ origin: 'http://evil.example' })
    assert.equal(origin.status, 403)
    assert.match(origin.body.error.message, /refused Origin/)
    // the gateway's own names pass
    assert.equal((await raw({ host: `localhost:${port}`, origin: `http://localhost:${port}` })).status, 200)
  })
})
