// Inputs of the fuzzer (scripts/fuzz.ts): a seeded PRNG, random JSON, mutators of JSON values
// and bytes, and per protocol a generator of streams' worth of bytes built from valid frames
// (mutated fields, bit flips, truncation, length-prefix lies, wrong version bytes, random bodies,
// valid frames out of order) or random bytes. Every input is a function of the seed alone.

import { seededRandom } from '@plexus/runtime'

export type Rand = () => number

/** The runtime's seeded generator (sfc32): the same sequence on every platform for a seed. */
export const prng: (seed: number) => Rand = seededRandom
export const int = (r: Rand, n: number): number => Math.floor(r() * n)
export const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]
export const hex = (r: Rand, n: number): string => Array.from({ length: n }, () => '0123456789abcdef'[int(r, 16)]).join('')
export function bytes (r: Rand, n: number): Uint8Array {
  const b = new Uint8Array(n)
  for (let i = 0; i < n; i++) b[i] = int(r, 256)
  return b
}
const enc = new TextEncoder()

const NUMBERS = [0, -1, 1, 0.5, -0.0, 2 ** 31, 2 ** 32 + 1, 2 ** 53, -(2 ** 53), 1e308, -1e308, 4096, 65535, 1e-300, 3.5]
const STRINGS = ['', 'a', '\u0000', 'é漢🙂', '../../etc/passwd', 'config.json', 'tokenizer.json', '{"type":"open"}', '%s%n', 'null']

/** A random JSON value, `depth` levels deep at most; long strings and arrays, within about 1 MB in all. */
export function randomJson (r: Rand, depth = 3, budget = { left: 1 << 20 }): unknown {
  const k = budget.left <= 0 ? 0 : int(r, depth > 0 ? 9 : 6)
  switch (k) {
    case 0: return null
    case 1: return r() < 0.5
    case 2: return r() < 0.5 ? pick(r, NUMBERS) : (r() - 0.5) * 10 ** int(r, 12)
    case 3: return pick(r, STRINGS)
    case 4: { const s = r() < 0.1 ? 'x'.repeat(Math.min(budget.left, int(r, 100_000))) : hex(r, int(r, 80)); budget.left -= s.length; return s }
    case 5: return int(r, 2) === 0 ? hex(r, 32) : hex(r, 64)
    case 6: return Array.from({ length: r() < 0.05 ? int(r, 5000) : int(r, 5) }, () => { budget.left -= 8; return randomJson(r, depth - 1, budget) })
    default: {
      const o: Record<string, unknown> = {}
      const keys = ['type', 'op', 'sessionId', 'modelId', 'code', 'step', 'position', 'tokens', 'hidden', 'length', '__proto__', 'constructor', hex(r, 4)]
      for (let i = int(r, 6); i > 0; i--) o[pick(r, keys)] = randomJson(r, depth - 1, budget)
      return o
    }
  }
}

/** One to three edits of a JSON object: a field set to a random value, deleted, or added; type confusion. */
export function mutateJson (r: Rand, obj: Record<string, unknown>): unknown {
  if (r() < 0.08) return randomJson(r)
  const o: Record<string, unknown> = JSON.parse(JSON.stringify(obj))
  for (let i = 1 + int(r, 3); i > 0; i--) {
    const keys = Object.keys(o)
    const key = keys.length > 0 ? pick(r, keys) : 'type'
    const op = int(r, 6)
    if (op === 0) delete o[key]
    else if (op === 1) o[hex(r, 3)] = randomJson(r, 1)
    else if (op === 2 && typeof o[key] === 'number') o[key] = pick(r, NUMBERS) * (r() < 0.5 ? 1 : -1)
    else if (op === 3 && typeof o[key] === 'string') o[key] = (o[key] as string).slice(0, int(r, (o[key] as string).length + 1)) + (r() < 0.5 ? pick(r, STRINGS) : '')
    else o[key] = randomJson(r, 2)
  }
  return o
}

/** Bit flips, truncation, inserted or overwritten bytes. */
export function mutateBytes (r: Rand, b: Uint8Array): Uint8Array {
  const out = Uint8Array.from(b)
  switch (int(r, 4)) {
    case 0: for (let i = 1 + int(r, 8); i > 0 && out.length > 0; i--) out[int(r, out.length)] ^= 1 << int(r, 8); return out
    case 1: return out.subarray(0, int(r, out.length))
    case 2: { const at = int(r, out.length + 1); const ins = bytes(r, 1 + int(r, 64)); const c = new Uint8Array(out.length + ins.length); c.set(out.subarray(0, at)); c.set(ins, at); c.set(out.subarray(at), at + ins.length); return c }
    default: { const at = int(r, out.length + 1); out.set(bytes(r, Math.min(out.length - at, 1 + int(r, 16))), at); return out }
  }
}

export function varint (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) { out.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  out.push(n)
  return Uint8Array.from(out)
}
export const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}
export const lp = (b: Uint8Array): Uint8Array => concat(varint(b.length), b)

/** A varint length prefix that does not match its body: huge, never-ending, short, or malformed. */
export function lpLie (r: Rand, b: Uint8Array): Uint8Array {
  switch (int(r, 4)) {
    case 0: return concat(varint(pick(r, [2 ** 31, 2 ** 40, 2 ** 27, 100 << 20])), b)
    case 1: return concat(varint(b.length + 1 + int(r, 100_000)), b)
    case 2: return concat(varint(Math.max(0, b.length - 1 - int(r, 16))), b)
    default: return concat(new Uint8Array(10 + int(r, 4)).fill(0xff), b)
  }
}

const f32 = (r: Rand, n: number): Uint8Array => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = r() * 2 - 1; return new Uint8Array(a.buffer) }
const json = (v: unknown): Uint8Array => enc.encode(JSON.stringify(v))

/** What the generators know of the node under test. */
export interface Target { modelId: string, numBlocks: number, hidden: number, serverPeer: string }

/** A structured frame: header JSON plus payload, encoded by a protocol's `encode`. */
interface Frame { header: Record<string, unknown>, payload?: Uint8Array }
interface Framing {
  encode: (header: unknown, payload?: Uint8Array, r?: Rand) => Uint8Array
  /** Valid sequences of frames: a conversation an honest peer could have. */
  sequences: (r: Rand, t: Target) => Frame[][]
}

function sessionBody (header: unknown, payload?: Uint8Array, version = 1, hlLie?: number): Uint8Array {
  const hb = json(header)
  const pre = new Uint8Array(6)
  pre[0] = version
  new DataView(pre.buffer).setUint32(2, hlLie ?? hb.length)
  return concat(pre, hb, payload ?? new Uint8Array())
}
function verifyBody (header: unknown, payload?: Uint8Array, hlLie?: number): Uint8Array {
  const hb = json(header)
  const pre = new Uint8Array(4)
  new DataView(pre.buffer).setUint32(0, hlLie ?? hb.length)
  return concat(pre, hb, payload ?? new Uint8Array())
}

const SESSION: Framing = {
  encode: (h, p) => sessionBody(h, p),
  sequences: (r, t) => {
    const sid = hex(r, 32)
    const n = 1 + int(r, 3)
    const open = { header: { type: 'open', sessionId: sid, modelId: t.modelId, start: 0, end: t.numBlocks, maxLength: 16 } }
    const step = (position: number, tokens: number, i: number): Frame => ({ header: { type: 'step', sessionId: sid, step: i, position, tokens, hidden: t.hidden, dtype: 'f32' }, payload: f32(r, tokens * t.hidden) })
    return [
      [open, step(0, n, 0), step(n, 1, 1), { header: { type: 'close', sessionId: sid } }],
      [open, step(0, n, 0), { header: { type: 'truncate', sessionId: sid, length: 0 } }, step(0, 1, 1)],
      [{ header: { ...open.header, start: int(r, t.numBlocks), end: t.numBlocks, next: { peer: t.serverPeer, sessionId: hex(r, 32), addrs: [] } } }],
      [{ header: { type: 'attach', sessionId: sid } }, step(0, 1, 0)]
    ]
  }
}
const VERIFY: Framing = {
  encode: (h, p) => verifyBody(h, p),
  sequences: (r, t) => [
    [{ header: { type: 'check', verifyId: hex(r, 32), server: t.serverPeer, modelId: t.modelId, start: 0, end: t.numBlocks, sessionId: hex(r, 32), hidden: t.hidden, maxLength: 16, commitments: [hex(r, 64)] }, payload: f32(r, 2 * t.hidden) }],
    [{ header: { type: 'get-report', digest: hex(r, 64) } }, { header: { type: 'close', verifyId: hex(r, 32) } }],
    [{ header: { type: 'recheck' }, payload: bytes(r, int(r, 512)) }]
  ]
}
const JSON_LP = (seqs: (r: Rand, t: Target) => Frame[][]): Framing => ({ encode: h => json(h), sequences: seqs })
const MODEL = JSON_LP((r, t) => [
  [{ header: { op: 'list', modelId: t.modelId } }],
  [{ header: { op: 'read', modelId: t.modelId, kind: 'file', name: pick(r, ['config.json', 'tokenizer.json', 'plexus-manifest.json']), offset: int(r, 64), length: 1 + int(r, 4096) } }, { header: { op: 'list', modelId: t.modelId } }],
  [{ header: { op: 'read', modelId: t.modelId, kind: 'tensor', name: 'model.embed_tokens.weight', offset: 0, length: 256 } }]
])
const INFO = JSON_LP(() => [[{ header: {} }]])

/** Kademlia (protobuf): FIND_NODE / GET_VALUE / GET_PROVIDERS / PING of a key. */
function kadMessage (type: number, key: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(0x08, type), Uint8Array.of(0x12), varint(key.length), key)
}
const KAD: Framing = {
  encode: (h, p) => p ?? json(h),
  sequences: r => [[{ header: {}, payload: kadMessage(pick(r, [0, 1, 3, 4, 5]), bytes(r, pick(r, [32, 34, 0, 300]))) }]]
}

const FRAMINGS: Record<string, Framing> = {
  '/plexus/session/1.0.0': SESSION,
  '/plexus/verify/1.0.0': VERIFY,
  '/plexus/model/1.0.0': MODEL,
  '/plexus/info/1.0.0': INFO,
  '/plexus/kad/1.0.0': KAD
}

export const MUTATIONS = ['valid', 'field', 'bytes', 'length-lie', 'header-lie', 'version', 'random-json', 'random-bytes', 'out-of-order', 'tensor'] as const
export type Mutation = typeof MUTATIONS[number]

/** One stream's worth of bytes for `protocol`, and which mutation made it. */
export function streamInput (r: Rand, protocol: string, t: Target): { mutation: Mutation, data: Uint8Array } {
  const f = FRAMINGS[protocol]
  // protocols the fuzzer has no frame model of (identify, ping, …) get random bytes and lies
  if (f == null) {
    const b = bytes(r, int(r, 2) === 0 ? int(r, 64) : int(r, 4096))
    const m = pick(r, ['random-bytes', 'length-lie', 'bytes'] as const)
    return { mutation: m, data: m === 'random-bytes' ? b : m === 'length-lie' ? lpLie(r, b) : lp(b) }
  }
  const seqs = f.sequences(r, t)
  let seq = pick(r, seqs).map(x => ({ ...x }))
  const mutation = pick(r, MUTATIONS)
  const i = int(r, seq.length)
  const isSession = protocol === '/plexus/session/1.0.0'
  const enc1 = (x: Frame): Uint8Array => f.encode(x.header, x.payload, r)
  let bodies = seq.map(enc1)
  let framed: Uint8Array[] | undefined
  switch (mutation) {
    case 'valid': break
    case 'field': bodies[i] = f.encode(mutateJson(r, seq[i].header), seq[i].payload); break
    case 'bytes': bodies[i] = mutateBytes(r, bodies[i]); break
    case 'tensor': {
      const x = seq[i]
      const p = r() < 0.3 ? new Uint8Array(new Float32Array([NaN, Infinity, -Infinity, 1e38]).buffer) : x.payload == null ? bytes(r, int(r, 4096)) : mutateBytes(r, x.payload)
      bodies[i] = f.encode(x.header, p)
      break
    }
    case 'header-lie':
      bodies[i] = isSession
        ? sessionBody(seq[i].header, seq[i].payload, 1, pick(r, [0, 0xffffffff, 2 ** 31, int(r, 200)]))
        : protocol === '/plexus/verify/1.0.0' ? verifyBody(seq[i].header, seq[i].payload, pick(r, [0, 0xffffffff, int(r, 200)])) : mutateBytes(r, bodies[i])
      break
    case 'version': bodies[i] = isSession ? sessionBody(seq[i].header, seq[i].payload, pick(r, [0, 2, 255, int(r, 256)])) : f.encode(seq[i].header, seq[i].payload); if (!isSession) bodies[i][0] ^= 0xff; break
    case 'random-json': bodies[i] = f.encode(randomJson(r), r() < 0.3 ? bytes(r, int(r, 1024)) : undefined); break
    case 'random-bytes': framed = [r() < 0.5 ? lp(bytes(r, int(r, 8192))) : bytes(r, int(r, 8192))]; break
    case 'length-lie': break
    case 'out-of-order': {
      // shuffled, repeated or dropped frames of a valid conversation
      const all = seqs.flat()
      seq = Array.from({ length: 1 + int(r, 5) }, () => pick(r, all))
      bodies = seq.map(enc1)
      break
    }
  }
  framed ??= bodies.map((b, j) => mutation === 'length-lie' && j === i ? lpLie(r, b) : lp(b))
  return { mutation, data: concat(...framed) }
}

/** A gateway request: a route, and a body (random JSON, or a valid one mutated). */
export interface HttpInput { method: 'GET' | 'POST' | 'DELETE', path: string, body?: string, mutation: string, headers?: Record<string, string> }

/** `mcpSession`: an initialized MCP session, so that tool calls reach the tools. */
export function httpInput (r: Rand, model: string, mcpSession?: string): HttpInput {
  const msgs = [{ role: 'user', content: 'hello swarm' }]
  const valid: Array<[HttpInput['method'], string, Record<string, unknown> | undefined]> = [
    ['POST', '/v1/chat/completions', { model, messages: msgs, max_tokens: 2, temperature: 0 }],
    ['POST', '/v1/completions', { model, prompt: 'The swarm', max_tokens: 2, temperature: 0 }],
    ['POST', '/v1/messages', { model, max_tokens: 2, messages: msgs }],
    ['POST', '/api/generate', { model, prompt: 'hi', stream: false, options: { num_predict: 2 } }],
    ['POST', '/api/chat', { model, messages: msgs, stream: false, options: { num_predict: 2 } }],
    ['POST', '/api/show', { model }],
    ['POST', '/mcp', { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-03-26', capabilities: {}, clientInfo: { name: 'fuzz', version: '0' } } }],
    ['POST', '/mcp', { jsonrpc: '2.0', id: 2, method: 'tools/list' }],
    ['POST', '/mcp', { jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'generate', arguments: { model, prompt: 'hi', max_tokens: 2 } } }],
    ['POST', '/mcp', { jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: pick(r, ['chat', 'list_models', 'swarm_status']), arguments: { model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 } } }],
    ['GET', '/v1/models', undefined],
    ['GET', `/v1/models/${encodeURIComponent(model)}`, undefined],
    ['GET', '/api/tags', undefined],
    ['GET', '/api/ps', undefined],
    ['GET', '/api/version', undefined],
    ['GET', '/health', undefined],
    ['GET', '/metrics', undefined]
  ]
  const [method, path, body] = pick(r, valid)
  const input = pickBody(r, method, path, body)
  // most MCP requests name the live session (its tools run), some none or a made-up one
  if (path === '/mcp' && mcpSession != null && r() < 0.8) input.headers = { 'mcp-session-id': r() < 0.9 ? mcpSession : hex(r, 32) }
  return input
}

function pickBody (r: Rand, method: HttpInput['method'], path: string, body: Record<string, unknown> | undefined): HttpInput {
  // a small share of valid bodies keeps generation and MCP paths exercised; the rest are hostile
  const k = int(r, 10)
  if (body == null) return { method: r() < 0.8 ? method : 'POST', path, body: r() < 0.5 ? undefined : JSON.stringify(randomJson(r)), mutation: 'get' }
  if (k === 0) return { method, path, body: JSON.stringify(body), mutation: 'valid' }
  if (k <= 3) return { method, path, body: JSON.stringify(randomJson(r)), mutation: 'random-json' }
  if (k === 4) return { method, path, body: new TextDecoder().decode(mutateBytes(r, enc.encode(JSON.stringify(body)))), mutation: 'bytes' }
  return { method, path, body: JSON.stringify(mutateJson(r, body)), mutation: 'field' }
}
