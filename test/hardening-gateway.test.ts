// The gateway under hostile HTTP input, on a real `plexus-client serve` process: foreign content
// types, Host names and Origins are refused with named errors; half-sent bodies are cut off by the
// request timeout and the connection cap; a 4 MB prompt is refused before it is tokenized, and a
// 2 MB one that fits the context is tokenized off the event loop while /health keeps answering.
// After each attack an honest client gets the same tokens as before, and the process's RSS stays
// within a stated bound of its baseline.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import { connect } from 'node:net'
import { createInterface } from 'node:readline'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import { Ollama } from 'ollama'
import { loadTokenizer } from '@plexus/runtime'
import { ROOT, CLIENT_BIN } from './support/fixtures.ts'
import { makeModel, SHAPES } from '../scripts/lib/model-maker.ts'

/** RSS may grow by this much over the baseline taken after a warm-up request (MiB). */
const RSS_BOUND_MIB = 96
/**
 * After two legal 2 MB prompts: tokenizing 800k tokens takes ~110 MiB of the worker's heap, which
 * the allocator keeps (tokenizing them inline took as much); measured +180 to +230 MiB.
 */
const RSS_BIG_PROMPT_BOUND_MIB = 512
const MAX_CONNECTIONS = 64
const REQUEST_TIMEOUT_S = 2
const ALLOWED_ORIGIN = 'https://app.example'
/** The model's context: prompts up to 16 bytes a position (2 MiB) are tokenized. */
const CONTEXT = 131072
/** A legal prompt's size: about 2 s of tokenizing here, were it done on the event loop. */
const BIG_PROMPT_BYTES = 2_000_000
/** /health's median latency while such a prompt is tokenized, and the fewest probes it must answer meanwhile. */
const HEALTH_P50_MS = 200
const MIN_PROBES = 5
const PROSE = 'The keeper climbed the stairs, wound the clock and watched the ships come around the point. '

function rssMiB (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  assert.ok(m != null)
  return Number(m[1]) / 1024
}

interface Raw { status: number, headers: Record<string, string | string[] | undefined>, body: any }

describe('hardening: the HTTP gateway under hostile requests', function () {
  this.timeout(180_000)
  let dir: string
  let child: ChildProcess
  let base: string
  let port: number
  let openai: OpenAI
  let reference: string
  let baseline: number
  let model: string
  let name: string

  /** A request with exactly these headers (fetch would add a content type and fix the Host). */
  async function raw (method: string, path: string, headers: Record<string, string>, body?: string): Promise<Raw> {
    return await new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, method, headers: { host: `127.0.0.1:${port}`, ...headers, ...(body != null ? { 'content-length': String(Buffer.byteLength(body)) } : {}) } }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => { text += d })
        res.on('end', () => {
          let parsed: any = text
          try { parsed = JSON.parse(text) } catch {}
          resolve({ status: res.statusCode!, headers: res.headers, body: parsed })
        })
      })
      req.on('error', reject)
      if (body != null) req.write(body)
      req.end()
    })
  }
  const completion = (): string => JSON.stringify({ model: name, prompt: 'The swarm', max_tokens: 8, temperature: 0 })

  /** What an honest OpenAI client gets: the same text every time. */
  async function honest (): Promise<string> {
    const r = await openai.completions.create({ model: name, prompt: 'The swarm', max_tokens: 8, temperature: 0 })
    return r.choices[0].text
  }

  function checkRss (attack: string, bound = RSS_BOUND_MIB): void {
    const now = rssMiB(child.pid!)
    console.log(`      RSS after ${attack}: ${now.toFixed(0)} MiB (baseline ${baseline.toFixed(0)} MiB, bound +${bound} MiB)`)
    assert.ok(now <= baseline + bound, `RSS ${now.toFixed(0)} MiB after ${attack} exceeds the baseline ${baseline.toFixed(0)} + ${bound} MiB`)
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'plexus-hardening-gw-'))
    // the limits come from a config file, as every serve flag may
    model = join(dir, 'tiny')
    await makeModel({ shape: { ...SHAPES.tiny, maxPositions: CONTEXT }, out: model, seed: 7 })
    const config = join(dir, 'serve.yaml')
    await writeFile(config, `cors:\n  - ${ALLOWED_ORIGIN}\nrequest-timeout: ${REQUEST_TIMEOUT_S}\nmax-connections: ${MAX_CONNECTIONS}\n`)
    child = spawn(process.execPath, [join(ROOT, CLIENT_BIN), 'serve', '--config', config, '--local', '--model', model, '--port', '0', '--json', '--backend', 'wasm'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    child.stderr!.on('data', (d: Buffer) => { err += d.toString() })
    const ready = await new Promise<any>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => { try { const ev = JSON.parse(line); if (ev.event === 'ready') resolve(ev) } catch {} })
      child.once('exit', (code) => { reject(new Error(`serve exited (${code}):\n${err}`)) })
    })
    base = ready.url
    name = ready.model
    port = Number(new URL(base).port)
    openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0 })
    reference = await honest()
    assert.ok(reference.length > 0)
    baseline = rssMiB(child.pid!)
  })

  after(async () => {
    child?.kill('SIGTERM')
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('real clients keep working: OpenAI and Ollama clients, and a JSON body sent without a content type', async () => {
    assert.equal(await honest(), reference)
    const ollama = new Ollama({ host: base })
    const r = await ollama.generate({ model: name, prompt: 'The swarm', raw: true, options: { num_predict: 4, temperature: 0 } })
    assert.ok(r.done)
    const bare = await raw('POST', '/v1/completions', {}, completion())
    assert.equal(bare.status, 200, JSON.stringify(bare.body))
    assert.equal(bare.body.choices[0].text, reference)
    const typed = await raw('POST', '/v1/completions', { 'content-type': 'application/json; charset=utf-8' }, completion())
    assert.equal(typed.body.choices[0].text, reference)
  })

  it('a body of a type a web page may send cross-site (text/plain, form, multipart) is refused with 415', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const r = await raw('POST', '/v1/completions', { 'content-type': type }, completion())
      assert.equal(r.status, 415, type)
      assert.equal(r.body.error.code, 'unsupported_media_type')
      assert.match(r.body.error.message, /send application\/json/)
    }
    const ollamaDialect = await raw('POST', '/api/generate', { 'content-type': 'text/plain' }, JSON.stringify({ model: name, prompt: 'x' }))
    assert.equal(ollamaDialect.status, 415)
    assert.equal(await honest(), reference)
    checkRss('foreign content types')
  })

  it('a foreign Host (DNS rebinding) or Origin is refused; loopback pages and --cors origins are allowed', async () => {
    const host = await raw('POST', '/v1/completions', { host: `evil.example:${port}`, 'content-type': 'application/json' }, completion())
    assert.equal(host.status, 403)
    assert.equal(host.body.error.code, 'host_not_allowed')
    // the check covers every route, GET ones too
    assert.equal((await raw('GET', '/v1/models', { host: `evil.example:${port}` })).status, 403)
    const origin = await raw('POST', '/v1/completions', { origin: 'http://evil.example', 'content-type': 'application/json' }, completion())
    assert.equal(origin.status, 403)
    assert.equal(origin.body.error.code, 'origin_not_allowed')
    assert.equal((await raw('POST', '/v1/completions', { origin: 'null', 'content-type': 'application/json' }, completion())).status, 403)
    const preflight = await raw('OPTIONS', '/v1/completions', { origin: 'http://evil.example', 'access-control-request-method': 'POST' })
    assert.equal(preflight.status, 403)

    const local = await raw('POST', '/v1/completions', { host: `localhost:${port}`, origin: 'http://localhost:3000', 'content-type': 'application/json' }, completion())
    assert.equal(local.status, 200)
    const allowedPreflight = await raw('OPTIONS', '/v1/completions', { origin: ALLOWED_ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' })
    assert.equal(allowedPreflight.status, 204)
    assert.equal(allowedPreflight.headers['access-control-allow-origin'], ALLOWED_ORIGIN)
    const allowed = await raw('POST', '/v1/completions', { origin: ALLOWED_ORIGIN, 'content-type': 'application/json' }, completion())
    assert.equal(allowed.status, 200)
    assert.equal(allowed.headers['access-control-allow-origin'], ALLOWED_ORIGIN)
    assert.equal(allowed.body.choices[0].text, reference)
    checkRss('foreign Host and Origin')
  })

  it(`300 half-sent bodies: at most ${MAX_CONNECTIONS} are accepted, all are cut off by the ${REQUEST_TIMEOUT_S} s request timeout`, async () => {
    const sockets = Array.from({ length: 300 }, () => {
      const s = connect(port, '127.0.0.1')
      let answer = ''
      const closed = new Promise<string>(resolve => {
        s.on('data', (d) => { answer += d.toString() })
        s.on('error', () => {})
        s.on('close', () => { resolve(answer) })
      })
      s.on('connect', () => {
        s.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model":`)
      })
      return closed
    })
    const t0 = Date.now()
    const answers = await Promise.all(sockets)
    const seconds = (Date.now() - t0) / 1000
    const timedOut = answers.filter(a => a.startsWith('HTTP/1.1 408')).length
    const refused = answers.filter(a => a === '').length
    console.log(`      300 half-sent bodies: ${timedOut} answered 408, ${refused} closed on accept, all closed after ${seconds.toFixed(1)} s`)
    assert.ok(timedOut <= MAX_CONNECTIONS, `${timedOut} connections were accepted past the cap of ${MAX_CONNECTIONS}`)
    assert.ok(timedOut > 0, 'the accepted ones were answered 408 Request Timeout')
    assert.equal(timedOut + refused, 300, answers.filter(a => a !== '' && !a.startsWith('HTTP/1.1 408')).slice(0, 2).join('\n'))
    assert.equal(await honest(), reference)
    checkRss('300 half-sent bodies')
  })

  it('a 4 MB prompt is refused before it is tokenized, and /health keeps answering', async () => {
    const huge = 'swarm '.repeat(700_000)
    const healthMs: number[] = []
    let done = false
    const probe = (async () => {
      while (!done) {
        const t = performance.now()
        assert.equal((await fetch(`${base}/health`)).status, 200)
        healthMs.push(performance.now() - t)
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    })()
    const r = await raw('POST', '/v1/completions', { 'content-type': 'application/json' }, JSON.stringify({ model: name, prompt: huge, max_tokens: 4 }))
    const chat = await raw('POST', '/v1/chat/completions', { 'content-type': 'application/json' }, JSON.stringify({ model: name, messages: [{ role: 'user', content: huge }], max_tokens: 4 }))
    done = true
    await probe
    for (const x of [r, chat]) {
      assert.equal(x.status, 400)
      assert.equal(x.body.error.code, 'context_length_exceeded')
      assert.match(x.body.error.message, /it was not tokenized/)
    }
    console.log(`      /health during two 4 MB prompts: ${healthMs.length} probes, slowest ${Math.max(...healthMs).toFixed(0)} ms`)
    assert.equal(await honest(), reference)
    checkRss('4 MB prompts')
  })

  it(`a 2 MB prompt that fits the context is tokenized off the event loop: /health answers meanwhile, median under ${HEALTH_P50_MS} ms`, async () => {
    const big = PROSE.repeat(Math.floor(BIG_PROMPT_BYTES / PROSE.length))
    // what the same tokenizing costs on an event loop: the bound must be far below it
    const tok = (await loadTokenizer(model))!
    const t0 = performance.now()
    const inlineIds = tok.encode(big).length
    const inlineMs = performance.now() - t0
    console.log(`      ${big.length} bytes: ${inlineIds} tokens, ${inlineMs.toFixed(0)} ms to tokenize inline`)
    assert.ok(inlineMs > 3 * HEALTH_P50_MS, `tokenizing took only ${inlineMs.toFixed(0)} ms inline: too fast to tell a stalled event loop from a free one`)

    const probes: Array<{ start: number, ms: number }> = []
    let done = false
    const probe = (async () => {
      while (!done) {
        const start = performance.now()
        assert.equal((await fetch(`${base}/health`)).status, 200)
        probes.push({ start, ms: performance.now() - start })
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    })()
    /** One request; the probes started while it was outstanding. */
    const during = async (body: object, path: string): Promise<{ r: Raw, ms: number[], took: number }> => {
      const sent = performance.now()
      const r = await raw('POST', path, { 'content-type': 'application/json' }, JSON.stringify(body))
      const answered = performance.now()
      return { r, ms: probes.filter(p => p.start >= sent && p.start < answered).map(p => p.ms).sort((a, b) => a - b), took: answered - sent }
    }
    let text, chat
    try {
      text = await during({ model: name, prompt: big, max_tokens: 4 }, '/v1/completions')
      chat = await during({ model: name, messages: [{ role: 'user', content: big }], max_tokens: 4 }, '/v1/chat/completions')
    } finally {
      done = true
      await probe
    }
    // tokenized (the check before tokenizing let them through), then found longer than the context
    assert.equal(text.r.status, 400, JSON.stringify(text.r.body))
    assert.equal(text.r.body.error.code, 'context_length_exceeded')
    assert.match(text.r.body.error.message, new RegExp(`the prompt \\(${inlineIds}\\) plus max_tokens`), 'the worker counted the tokens the inline tokenizer does')
    assert.equal(chat.r.status, 400, JSON.stringify(chat.r.body))
    assert.equal(chat.r.body.error.code, 'context_length_exceeded')
    assert.doesNotMatch(chat.r.body.error.message, /not tokenized/)
    for (const [what, x] of [['completion', text], ['chat', chat]] as const) {
      const p50 = x.ms[Math.floor(x.ms.length / 2)]
      console.log(`      /health while a 2 MB ${what} prompt was tokenized (${x.took.toFixed(0)} ms): ${x.ms.length} probes, median ${p50?.toFixed(1)} ms, slowest ${x.ms.at(-1)?.toFixed(0)} ms`)
      assert.ok(x.ms.length >= MIN_PROBES, `only ${x.ms.length} /health probes were answered in the ${x.took.toFixed(0)} ms the ${what} prompt took: the event loop was blocked`)
      assert.ok(p50 < HEALTH_P50_MS, `/health's median latency was ${p50.toFixed(0)} ms while the ${what} prompt was tokenized`)
    }
    assert.equal(await honest(), reference)
    checkRss('2 MB prompts', RSS_BIG_PROMPT_BOUND_MIB)
  })
})
