import { randomBytes } from 'node:crypto'
import { decodeTensor, encodeTensor, tensorDigest } from '@plexus/protocol'
import type { WireDType } from '@plexus/protocol'
import { RemoteSpanSession, RemoteError, PeerFailure } from './remote-span.ts'
import type { Dialer, RemoteSpanInit } from './remote-span.ts'
import type { Hop } from '../routing/route.ts'

/**
 * Server-to-server forwarding. The client opens every hop's session itself, last hop first, each
 * open naming the next hop (peer and session id: the server dials it and attaches) and the
 * previous one (the only peer allowed to feed it). A step then goes client → first server → … →
 * last server → client: n + 1 one-way transfers instead of 2n. Every server still sends the client
 * its signed commitment; the commitments chain (a hop's input digest is the previous hop's output
 * digest), so what travelled between servers is bound by both ends' signatures.
 */
export async function openForwarded (dialer: Dialer, hops: Hop[], base: (hop: Hop) => Omit<RemoteSpanInit, 'peer' | 'start' | 'end'>, opts: { addrs: (peer: string) => string[], returnOutputs: boolean }): Promise<RemoteSpanSession[]> {
  const ids = hops.map(() => randomBytes(16).toString('hex'))
  const sessions: RemoteSpanSession[] = []
  try {
    // last first: a server attaches to its next hop's session before answering `opened`
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]
      const addrs = i + 1 < hops.length ? opts.addrs(hops[i + 1].peer).slice(0, 8) : []
      sessions.unshift(await RemoteSpanSession.open(dialer, {
        ...base(hop),
        peer: hop.peer,
        start: hop.start,
        end: hop.end,
        sessionId: ids[i],
        next: i + 1 < hops.length ? { peer: hops[i + 1].peer, sessionId: ids[i + 1], ...(addrs.length > 0 ? { addrs } : {}) } : undefined,
        prev: i > 0 ? hops[i - 1].peer : undefined,
        returnOutputs: opts.returnOutputs
      }))
    }
    return sessions
  } catch (err) {
    await Promise.all(sessions.map(async s => { await s.close() }))
    throw err
  }
}

/** What each hop of a forwarded step consumed and produced (outputs only where they were sent). */
export interface ForwardedStep {
  output: Float32Array
  hops: Array<{ commitment?: string, input?: Float32Array, output?: Float32Array }>
}

/**
 * One step through a forwarded route. All hops' answers are awaited together; the first failure
 * aborts the wait for the others (a hop after a dead one never gets the step). The error names
 * the hop at fault: the first one that failed on its own stream, or else the hop after one that
 * reported it could not push to it (`next-hop`).
 */
export async function stepForwarded (sessions: RemoteSpanSession[], hidden: Float32Array, tokens: number, opts: { dtype: WireDType, timeoutMs: number }): Promise<ForwardedStep> {
  const stop = new AbortController()
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; stop.abort(new DOMException('no answer in time', 'TimeoutError')) }, opts.timeoutMs)
  // hops that failed by themselves, before this wait was stopped
  const own = new Set<number>()
  const sent = opts.dtype === 'f32' ? hidden : decodeTensor(encodeTensor(hidden, opts.dtype), opts.dtype)
  let upstream: Promise<{ digest: string, data?: Float32Array }> = tensorDigest(sent).then(digest => ({ digest, data: sent }))
  // each hop's answer is checked as soon as it and the hop before it are in, while later hops
  // still compute: only the last hop's check stays on the step's critical path
  const hops = sessions.map((s, i) => {
    const answer = s.receive(tokens, stop.signal)
    const input = upstream
    const checked = answer.then(async (r) => {
      const before = await input
      const accepted = await s.accept(r, tokens, before)
      return { commitment: r.commitment, input: before.data, output: accepted.output, digest: accepted.outputDigest }
    })
    upstream = checked.then(c => ({ digest: c.digest, data: c.output }))
    // an upstream failure is the upstream hop's, not this one's
    upstream.catch(() => {})
    answer.catch(() => { if (!stop.signal.aborted) own.add(i); stop.abort(new Error('another hop failed')) })
    checked.catch(() => { stop.abort(new Error('another hop failed')) })
    return { answer, checked }
  })
  try {
    await sessions[0].send(hidden, tokens, stop.signal)
  } catch (err) {
    own.add(0)
    stop.abort(err)
  }
  const answers = await Promise.allSettled(hops.map(async h => await h.answer))
  const checks = await Promise.allSettled(hops.map(async h => await h.checked))
  clearTimeout(timer)
  const failures = answers.flatMap((r, i) => r.status === 'rejected' ? [{ i, err: r.reason, own: timedOut || own.has(i) }] : [])
  // a hop whose answer came but whose commitment did not hold (which stopped the wait for the rest)
  const bad = checks.findIndex((c, i) => c.status === 'rejected' && answers[i].status === 'fulfilled')
  if (bad >= 0) failures.push({ i: bad, err: (checks[bad] as PromiseRejectedResult).reason, own: true })
  if (failures.length > 0) throw blame(sessions, failures.sort((x, y) => x.i - y.i))
  const done = checks.map(c => (c as PromiseFulfilledResult<{ commitment?: string, input?: Float32Array, output?: Float32Array }>).value)
  const output = done[done.length - 1].output
  if (output == null) throw new PeerFailure(sessions[sessions.length - 1].peer, 'the last hop sent no output')
  return { output, hops: done.map(({ commitment, input, output }) => ({ commitment, input, output })) }
}

function blame (sessions: RemoteSpanSession[], failures: Array<{ i: number, err: any, own: boolean }>): Error {
  const isNextHop = (err: any): boolean => err instanceof RemoteError && err.code === 'next-hop'
  const culprit = failures.find(f => f.own && !isNextHop(f.err))
  if (culprit != null) return culprit.err
  const reporter = failures.find(f => isNextHop(f.err))
  if (reporter != null && reporter.i + 1 < sessions.length) {
    return new PeerFailure(sessions[reporter.i + 1].peer, `unreachable from the previous hop (${reporter.err.message})`)
  }
  return failures[0].err
}
