import { encodeVerifyMessage, decodeVerifyMessage } from '@plexus/protocol'
import { PROTOCOLS, VERIFY_PROTOCOL, Channel, openChannel } from '@plexus/p2p'
import type { CheckMessage, VerdictMessage, RecheckedMessage, ReportMessage, VerifyMessage } from '@plexus/protocol'
import type { Dialer } from './remote-span.ts'
import { PeerFailure } from './remote-span.ts'

/** One stream to a verifier: checks of one hop (a verify session), or re-checks of reports. */
export class VerifyClient {
  readonly peer: string
  private readonly channel: Channel
  private readonly timeoutMs: number

  private constructor (peer: string, channel: Channel, timeoutMs: number) {
    this.peer = peer
    this.channel = channel
    this.timeoutMs = timeoutMs
  }

  static async open (dialer: Dialer, peer: string, target: unknown, opts: { timeoutMs?: number } = {}): Promise<VerifyClient> {
    try {
      const channel = await openChannel(dialer, target, VERIFY_PROTOCOL, PROTOCOLS.verify.client, AbortSignal.timeout(10_000))
      return new VerifyClient(peer, channel, opts.timeoutMs ?? 60_000)
    } catch (err: any) {
      throw new PeerFailure(peer, `cannot open a verify stream: ${err.message}`, { cause: err })
    }
  }

  async check (msg: Omit<CheckMessage, 'type'>): Promise<VerdictMessage> {
    return await this.request({ type: 'check', ...msg }, 'verdict') as VerdictMessage
  }

  async recheck (report: Uint8Array): Promise<RecheckedMessage> {
    return await this.request({ type: 'recheck', report }, 'rechecked') as RecheckedMessage
  }

  /** The fraud report with this digest, as the verifier keeps it (undefined when it does not). */
  async getReport (digest: string): Promise<Uint8Array | undefined> {
    const r = await this.request({ type: 'get-report', digest }, 'report') as ReportMessage
    if (r.digest !== digest) throw new PeerFailure(this.peer, `verifier answered with report ${r.digest.slice(0, 12)} for ${digest.slice(0, 12)}`)
    return r.found ? r.report : undefined
  }

  private async request (msg: VerifyMessage, expect: VerifyMessage['type']): Promise<VerifyMessage> {
    const signal = AbortSignal.timeout(this.timeoutMs)
    let reply: VerifyMessage
    try {
      reply = decodeVerifyMessage(await this.channel.request(encodeVerifyMessage(msg), signal))
    } catch (err: any) {
      this.channel.abort(err)
      throw new PeerFailure(this.peer, err.name === 'TimeoutError' ? 'verifier gave no answer in time' : err.message, { cause: err })
    }
    if (reply.type === 'error') {
      this.channel.abort(new Error(reply.message))
      throw new PeerFailure(this.peer, `verifier refused: ${reply.code}: ${reply.message}`)
    }
    if (reply.type !== expect) {
      this.channel.abort(new Error('protocol violation'))
      throw new PeerFailure(this.peer, `verifier sent ${reply.type} where ${expect} was expected`)
    }
    return reply
  }

  async close (): Promise<void> {
    await this.channel.close()
  }
}
