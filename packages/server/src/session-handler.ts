import type { Stream, Connection } from '@libp2p/interface'
import { ProtocolError, inspectStep, sessionCodec, sessionFrameLimit } from '@plexus/protocol'
import { PROTOCOLS, SESSION_PROTOCOL, serveChannel } from '@plexus/p2p'
import type { AttachMessage, CloseMessage, OpenMessage, SessionMessage, StepMessage, TruncateMessage } from '@plexus/protocol'
import type { BackendSet } from './backend.ts'
import { RouteTable } from './routed-sessions.ts'
import { sessionStream } from './handlers/session-context.ts'
import type { SessionHandlerComponents, SessionHandlerInit, SessionStream } from './handlers/session-context.ts'
import { handleOpen } from './handlers/session-open.ts'
import { handleAttach } from './handlers/session-attach.ts'
import { handleStep } from './handlers/session-step.ts'
import { handleTruncate } from './handlers/session-truncate.ts'
import { handleClose } from './handlers/session-close.ts'

export { SESSION_PROTOCOL }
export type { SessionHandlerComponents, SessionHandlerInit }

/** One handler per message a client may send (kad-dht's rpc/handlers). */
const HANDLERS: { [T in SessionMessage['type']]?: (s: SessionStream, msg: any) => Promise<void> } = {
  open: async (s, m: OpenMessage) => { await handleOpen(s, m) },
  attach: async (s, m: AttachMessage) => { await handleAttach(s, m) },
  step: async (s, m: StepMessage) => { await handleStep(s, m) },
  truncate: async (s, m: TruncateMessage) => { await handleTruncate(s, m) },
  close: async (s, m: CloseMessage) => { await handleClose(s, m) }
}

/** The frame limit and step-token limit: given, or the largest over the backends served now. */
function limitsOf (backends: BackendSet, init: SessionHandlerInit): { frame: () => number, stepTokens: () => number } {
  const stepTokens = (): number => init.maxStepTokens ?? Math.max(0, ...backends.all().map(b => b.maxStepTokens))
  if (init.maxFrameBytes != null) { const fixed = init.maxFrameBytes; return { frame: () => fixed, stepTokens } }
  if (init.hiddenSize != null && init.maxStepTokens != null) {
    const fixed = sessionFrameLimit({ hiddenSize: init.hiddenSize, maxStepTokens: init.maxStepTokens })
    return { frame: () => fixed, stepTokens }
  }
  return {
    frame: () => Math.max(sessionFrameLimit({ hiddenSize: 0, maxStepTokens: 0 }),
      ...backends.all().map(b => sessionFrameLimit({ hiddenSize: init.hiddenSize ?? b.config.hiddenSize, maxStepTokens: init.maxStepTokens ?? b.maxStepTokens }))),
    stepTokens
  }
}

/**
 * `/plexus/session/1.0.0`: one long-lived stream per session. The client opens a session on a
 * span, then sends steps of hidden states and reads results, one step in flight at a time.
 * Any malformed or unserviceable request gets an `error` frame naming the problem; the stream
 * is then closed and its sessions freed. Other sessions are never affected.
 */
export function createSessionHandler (components: SessionHandlerComponents, init: SessionHandlerInit = {}) {
  const { backends, log } = components
  const defaults = PROTOCOLS.session.server
  const limits = limitsOf(backends, init)
  const routes = new RouteTable()
  const codec = sessionCodec({ requireFinite: true })

  return async function handleSession (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    let s: SessionStream | undefined
    await serveChannel(stream, peer, {
      name: 'session',
      codec,
      log,
      budget: components.budget,
      limits: {
        maxFrameBytes: limits.frame,
        idleMs: init.idleTimeoutMs ?? defaults.idleMs,
        writeMs: init.writeTimeoutMs ?? defaults.writeMs,
        // a step's token count is checked from its header, before its tensor is buffered
        inspect: inspectStep(limits.stepTokens)
      },
      dispatch: async (msg, channel) => {
        s ??= sessionStream({ components, init, routes, channel, peer, frameLimit: limits.frame })
        const handler = HANDLERS[msg.type]
        if (handler == null) throw new ProtocolError('bad-request', `a client may not send ${msg.type} messages`)
        await handler(s, msg)
      },
      onRefused: async ({ code, message }) => {
        init.onError?.(code, message)
        // a broken feed breaks its sessions: their clients hear it from this server
        for (const id of s?.fed ?? []) await routes.get(id)?.fail(code, `from the previous hop's stream: ${message}`)
      },
      cleanup: async () => {
        for (const [id, backend] of s?.owned ?? []) { await routes.remove(id); await backend.close(id) }
      }
    })
  }
}
