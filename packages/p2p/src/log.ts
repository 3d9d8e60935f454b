// The command-line tools' own messages: a level (--log-level) and a format (--log-format), on
// stderr so that what a command prints on stdout (JSON results, generated text) stays clean.
// Library modules keep libp2p's component logger; `debug` switches its plexus namespaces on.
import { enable, logger } from '@libp2p/logger'

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevel = typeof LOG_LEVELS[number]
export const LOG_FORMATS = ['text', 'json'] as const
export type LogFormat = typeof LOG_FORMATS[number]

export interface LogSettings {
  level: LogLevel
  format: LogFormat
  /** Starts every text line, e.g. "plexus-node: " (JSON lines name the component instead). */
  prefix: string
}

export interface Log {
  readonly component: string
  error: (msg: string, fields?: Record<string, unknown>) => void
  warn: (msg: string, fields?: Record<string, unknown>) => void
  info: (msg: string, fields?: Record<string, unknown>) => void
  debug: (msg: string, fields?: Record<string, unknown>) => void
  /** A named event (ready, progress, ...): the human line in text, `{ event, ...fields }` in JSON. */
  event: (name: string, msg: string, fields?: Record<string, unknown>, level?: LogLevel) => void
  /** An event as one JSON object whatever the format (what --json asks of progress). */
  jsonEvent: (name: string, msg: string, fields?: Record<string, unknown>, level?: LogLevel) => void
  /** Whether messages of `level` are written at all. */
  enabled: (level: LogLevel) => boolean
}

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 }
/** Text tags, as the tools always wrote them (errors untagged: they are the last line). */
const TAG: Record<LogLevel, string> = { error: '', warn: 'warning: ', info: '', debug: 'debug: ' }

let settings: LogSettings = { level: 'info', format: 'text', prefix: '' }
let writeLine: (line: string) => void = (line) => { process.stderr.write(line) }
/** A tool configured logging, or a writer is set: library components write through the tool's log. */
let configured = false
let writerSet = false

export function isLogLevel (s: unknown): s is LogLevel { return (LOG_LEVELS as readonly unknown[]).includes(s) }
export function isLogFormat (s: unknown): s is LogFormat { return (LOG_FORMATS as readonly unknown[]).includes(s) }

export function logSettings (): Readonly<LogSettings> { return settings }

/** Sets how every Log writes from now on; `debug` also turns on libp2p's `plexus:*` debug logs. */
export function configureLogging (s: Partial<LogSettings>): void {
  settings = { ...settings, ...s }
  configured = true
  if (settings.level === 'debug') enable([process.env.DEBUG, 'plexus:*'].filter(v => v != null && v !== '').join(','))
}

/**
 * `--log-level` and `--log-format` as given in `argv` (values yargs would refuse are ignored
 * here and refused there), so that even a usage error is reported in the format asked for.
 */
export function configureLoggingFromArgv (argv: string[], prefix: string): void {
  const value = (flag: string): string | undefined => {
    let v: string | undefined
    for (let i = 0; i < argv.length; i++) {
      if (argv[i] === flag) v = argv[i + 1]
      else if (argv[i].startsWith(`${flag}=`)) v = argv[i].slice(flag.length + 1)
    }
    return v
  }
  const level = value('--log-level')
  const format = value('--log-format')
  configureLogging({ prefix, ...(isLogLevel(level) ? { level } : {}), ...(isLogFormat(format) ? { format } : {}) })
}

/** Routes log lines elsewhere while set (the progress bars print them above themselves); undefined: stderr again. */
export function setLogWriter (write: ((line: string) => void) | undefined): void {
  writeLine = write ?? ((line) => { process.stderr.write(line) })
  writerSet = write != null
}

/** A log for `component` (e.g. "node", "client", "gateway"), following configureLogging. */
export function createLog (component: string): Log {
  const enabled = (level: LogLevel): boolean => RANK[level] <= RANK[settings.level]
  const write = (level: LogLevel, msg: string, fields: Record<string, unknown> = {}, event?: string, json = settings.format === 'json'): void => {
    if (!enabled(level)) return
    if (json) {
      writeLine(JSON.stringify({ time: new Date().toISOString(), level, component, ...(event != null ? { event } : {}), msg, ...fields }) + '\n')
    } else {
      writeLine(`${settings.prefix}${TAG[level]}${msg}\n`)
    }
  }
  return {
    component,
    error: (msg, fields) => { write('error', msg, fields) },
    warn: (msg, fields) => { write('warn', msg, fields) },
    info: (msg, fields) => { write('info', msg, fields) },
    debug: (msg, fields) => { write('debug', msg, fields) },
    event: (name, msg, fields, level = 'info') => { write(level, msg, fields, name) },
    jsonEvent: (name, msg, fields, level = 'info') => { write(level, msg, fields, name, true) },
    enabled
  }
}

/** What a library component logs: plain messages at a level. */
export type ComponentLog = Pick<Log, 'error' | 'warn' | 'info' | 'debug'>

/**
 * One library component's log, e.g. componentLog('client', 'session'). In a tool (once it
 * configured logging, or while a writer is set) its lines are the tool's log's, as `component`;
 * elsewhere they go to libp2p's `plexus:<component>:<name>` debug logger, as the server's do,
 * so a library stays quiet unless DEBUG asks.
 */
export function componentLog (component: string, name: string): ComponentLog {
  const tool = createLog(component)
  const debug = logger(`plexus:${component}:${name}`)
  const at = (level: keyof ComponentLog) => (msg: string, fields?: Record<string, unknown>): void => {
    if (configured || writerSet) tool[level](msg, fields)
    else if (level === 'error') debug.error('%s', msg)
    else debug('%s', msg)
  }
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') }
}
