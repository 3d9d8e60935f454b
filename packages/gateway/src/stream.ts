// Streaming responses: headers go out with the first write, so errors raised before any output
// still get a proper status code and body from the error handler.
import type { FastifyReply, FastifyRequest } from 'fastify'

export class LazyStream {
  readonly #reply: FastifyReply
  readonly #headers: Record<string, string>
  #started = false

  constructor (reply: FastifyReply, contentType: string) {
    this.#reply = reply
    this.#headers = { 'content-type': contentType, 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' }
  }

  get started (): boolean { return this.#started }

  write (text: string): void {
    const raw = this.#reply.raw
    if (!this.#started) {
      this.#started = true
      this.#reply.hijack()
      raw.writeHead(200, this.#headers)
    }
    if (!raw.destroyed && !raw.writableEnded) raw.write(text)
  }

  end (): void {
    if (!this.#reply.raw.writableEnded) this.#reply.raw.end()
  }
}

export const sse = (data: unknown, event?: string): string =>
  (event != null ? `event: ${event}\n` : '') + `data: ${JSON.stringify(data)}\n\n`

/** Aborts when the client goes away before the response is complete. */
export function disconnectSignal (request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ac.abort(new Error('the client disconnected'))
  })
  request.raw.once('aborted', () => { ac.abort(new Error('the client disconnected')) })
  return ac.signal
}
