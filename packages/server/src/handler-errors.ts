/** Error messages travel in frames whose schemas cap them (they may quote the client's input). */
export const MAX_ERROR_MESSAGE = 2000

/**
 * What a protocol handler answers for an error it caught: a refusal of the handler's own kind
 * (`isOwn`) or a span's refusal (bad positions, lengths) keeps its code and message; anything else
 * is an internal error, still named.
 */
export function errorReply<C extends string> (err: any, isOwn: (e: unknown) => e is Error & { code: C }): { code: C | 'bad-request' | 'internal', message: string } {
  const code = isOwn(err) ? err.code : (err?.name === 'SpanError' ? 'bad-request' : 'internal')
  let message: string = isOwn(err) || err?.name === 'SpanError' ? err.message : `internal error: ${err?.message ?? String(err)}`
  if (message.length > MAX_ERROR_MESSAGE) message = message.slice(0, MAX_ERROR_MESSAGE - 1) + '…'
  return { code, message }
}
