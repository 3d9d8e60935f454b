// One error vocabulary for every package: an error a user or operator can act on is a
// PlexusError, whose `code` names the condition and which says how the CLIs exit and what
// status the gateway answers. Anything else that reaches a CLI or the gateway is a bug.

export interface PlexusErrorOptions extends ErrorOptions {
  /** What the gateway answers when a request meets this error. Default 500: not the request's fault. */
  httpStatus?: number
  /** How a CLI exits on it after printing its message. Default 2: an expected failure, no stack. */
  exitCode?: number
}

/**
 * An expected failure. Subclasses keep their own `name` (a plain PlexusError reads as `Error`,
 * like the plain errors it replaced); `code` is stable: logs, JSON output and tests match on it.
 */
export class PlexusError extends Error {
  readonly code: string
  readonly httpStatus: number
  readonly exitCode: number

  constructor (code: string, message: string, opts: PlexusErrorOptions = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined)
    this.code = code
    this.httpStatus = opts.httpStatus ?? 500
    this.exitCode = opts.exitCode ?? 2
  }
}

/** A flag, argument or setting that cannot work as given; the message says what to give instead. */
export class UsageError extends PlexusError {
  constructor (message: string) { super('usage', message, { httpStatus: 400 }); this.name = 'UsageError' }
}

/** An error as a worker thread posts it: enough to rebuild it on the other side, a PlexusError as one. */
export interface PostedError { name: string, message: string, code?: string, httpStatus?: number }

export function postedError (err: any): PostedError {
  const posted: PostedError = { name: err?.name ?? 'Error', message: String(err?.message ?? err) }
  return err instanceof PlexusError ? { ...posted, code: err.code, httpStatus: err.httpStatus } : posted
}
