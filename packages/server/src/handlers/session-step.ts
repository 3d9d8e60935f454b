import { ProtocolError } from '@plexus/protocol'
import type { StepMessage } from '@plexus/protocol'
import { replyStep, feedCheck } from '../routed-sessions.ts'
import type { SessionStream } from './session-context.ts'

/** `step`: hidden states through the span; the result (or, forwarded, its commitment) goes back. */
export async function handleStep (s: SessionStream, msg: StepMessage): Promise<void> {
  const routed = s.routes.get(msg.sessionId)
  const fedHere = s.fed.has(msg.sessionId)
  feedCheck(routed, fedHere, msg.sessionId)
  const backend = fedHere ? (routed?.backend ?? closedFeed(msg.sessionId)) : s.own(msg.sessionId)
  if (msg.hidden !== backend.config.hiddenSize) {
    throw new ProtocolError('bad-tensor', `hidden size ${msg.hidden} does not match the model's ${backend.config.hiddenSize}`)
  }
  const t0 = performance.now()
  const out = await backend.step(msg.sessionId, msg.position, msg.tokens, msg.data, msg.rewind === true)
  const computeMs = performance.now() - t0
  s.init.onStep?.({ tokens: msg.tokens, computeMs })
  await replyStep({ privateKey: s.components.privateKey, send: s.send }, backend, routed, msg, out, computeMs)
}

function closedFeed (id: string): never { throw new ProtocolError('closed-session', `session ${id} was closed by its client`) }
