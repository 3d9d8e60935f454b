// Sends one fuzz input and says what became of it: over a real libp2p stream (the reply's error
// code if any, and whether the stream closed, was reset, or hung past its deadline), or as an HTTP
// request to the gateway (its status, or a hang / a dropped connection).
import { request as httpRequest } from 'node:http'
import type { PeerId, Stream } from '@libp2p/interface'
import type { PlexusNode } from '@plexus/p2p'
import type { HttpInput } from './fuzz-inputs.ts'

/** The state of the last stream that hung (for the failure report). */
export let lastStuck = ''

/** What a stream input came to: `<reply>/<end>`, `refused` (no stream), or `stuck`. */
export type StreamOutcome = string

const sleep = async (ms: number): Promise<null> => await new Promise(resolve => setTimeout(() => resolve(null), ms))

/**
 * Opens `protocol` on `peer`, sends `data`, closes its writable end and waits (at most
 * `deadlineMs`) for the remote to end the stream: having read all it will get, a server must
 * answer or give up, never hold the stream.
 */
export async function streamOnce (node: PlexusNode, peer: PeerId, protocol: string, data: Uint8Array, deadlineMs: number): Promise<StreamOutcome> {
  let stream: Stream
  const t0 = Date.now()
  try {
    stream = await node.dialProtocol(peer, protocol, { signal: AbortSignal.timeout(deadlineMs) })
  } catch (err) {
    // per-connection stream caps and busy handlers refuse here (the stream is reset at once)
    const e = err as Error & { code?: string }
    return `refused:${e.name !== 'Error' ? e.name : e.code ?? e.message.slice(0, 40)}`
  }
  const head: Uint8Array[] = []
  let size = 0
  stream.addEventListener('message', (e) => {
    const d = e.data.subarray()
    if (size < 4096) head.push(d)
    size += d.byteLength
  })
  const closed = new Promise<{ error?: Error }>(resolve => { stream.addEventListener('close', (e) => { resolve(e as any) }, { once: true }) })
  // a connection that closed while the stream was negotiated hands it back already ended: its
  // close event fired before anyone listened
  if (stream.status !== 'open') return `ended-at-open/${stream.status}`
  let closeErr = 'ok'
  const sentAt = Date.now()
  try {
    if (!stream.send(data)) await stream.onDrain({ signal: AbortSignal.timeout(deadlineMs) })
    await stream.close({ signal: AbortSignal.timeout(deadlineMs) })
  } catch (err) {
    closeErr = `${(err as Error).name} after ${Date.now() - sentAt} ms`
    // the remote may reset the stream while we still write: the close event says so
  }
  const ev = await Promise.race([closed, sleep(deadlineMs)])
  if (ev == null) {
    // how it hung: which ends are still open, and whether the connection under it still works
    const c = node.getConnections(peer)
    lastStuck = `stream ${stream.status} read ${stream.readStatus} write ${stream.writeStatus} remote read ${stream.remoteReadStatus} remote write ${stream.remoteWriteStatus}, ${size} B received, timeline ${JSON.stringify(stream.timeline)}, sent at ${sentAt - t0} ms, close ${closeErr}; connections ${c.map(x => `${x.status} (${x.streams.length} streams)`).join(', ')}`
    stream.abort(new Error('fuzz deadline'))
    return 'stuck'
  }
  const text = Buffer.concat(head).toString('latin1')
  const code = /"code"\s*:\s*"([a-z-]{1,32})"/.exec(text)?.[1]
  const reply = code != null ? `error:${code}` : /"error"\s*:/.test(text) ? 'error:text' : size > 0 ? 'reply' : 'none'
  return `${reply}/${ev.error != null ? 'reset' : 'closed'}`
}

export interface HttpOutcome { status: number | 'stuck' | 'conn-error', ok: boolean }

/** 2xx, 4xx and 503 (busy) are answers; another 5xx, a hang or a dropped connection is a failure. */
export async function httpOnce (port: number, input: HttpInput, deadlineMs: number): Promise<HttpOutcome> {
  return await new Promise((resolve) => {
    const body = input.body != null ? Buffer.from(input.body) : undefined
    const headers: Record<string, string> = { host: `127.0.0.1:${port}`, accept: 'application/json, text/event-stream' }
    Object.assign(headers, input.headers)
    if (body != null) { headers['content-type'] = 'application/json'; headers['content-length'] = String(body.length) }
    let done = false
    const finish = (o: HttpOutcome): void => { if (!done) { done = true; clearTimeout(timer); resolve(o) } }
    // a gateway that refuses early (413, 415) may close while the body is still being written:
    // once a status came, that is the answer
    let status: number | undefined
    const answered = (): void => { const s = status!; finish({ status: s, ok: (s >= 200 && s < 500) || s === 503 }) }
    const req = httpRequest({ host: '127.0.0.1', port, path: input.path, method: input.method, headers, agent: false }, (res) => {
      status = res.statusCode ?? 0
      res.on('data', () => {})
      res.on('end', answered)
      res.on('error', answered)
    })
    const timer = setTimeout(() => { req.destroy(); finish({ status: 'stuck', ok: false }) }, deadlineMs)
    req.on('error', () => { if (status != null) answered(); else finish({ status: 'conn-error', ok: false }) })
    if (body != null) req.write(body)
    req.end()
  })
}

/** A counter of outcomes per row (protocol or route) and column (mutation), and per outcome. */
export class Tally {
  readonly rows = new Map<string, { inputs: number, byMutation: Map<string, number>, outcomes: Map<string, number> }>()
  add (row: string, mutation: string, outcome: string): void {
    let r = this.rows.get(row)
    if (r == null) this.rows.set(row, r = { inputs: 0, byMutation: new Map(), outcomes: new Map() })
    r.inputs++
    r.byMutation.set(mutation, (r.byMutation.get(mutation) ?? 0) + 1)
    r.outcomes.set(outcome, (r.outcomes.get(outcome) ?? 0) + 1)
  }

  total (): number { let n = 0; for (const r of this.rows.values()) n += r.inputs; return n }
  count (pred: (outcome: string) => boolean): number {
    let n = 0
    for (const r of this.rows.values()) for (const [o, c] of r.outcomes) if (pred(o)) n += c
    return n
  }

  table (title: string): string {
    const fmt = (m: Map<string, number>): string => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')
    const lines = [title]
    for (const [row, r] of [...this.rows].sort()) {
      lines.push(`  ${row}: ${r.inputs} inputs`, `    tried:    ${fmt(r.byMutation)}`, `    outcomes: ${fmt(r.outcomes)}`)
    }
    return lines.join('\n')
  }

  json (): Record<string, unknown> {
    return Object.fromEntries([...this.rows].map(([k, r]) => [k, { inputs: r.inputs, tried: Object.fromEntries(r.byMutation), outcomes: Object.fromEntries(r.outcomes) }]))
  }
}
