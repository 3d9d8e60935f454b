// Shows the runtime's progress events (loading blocks, hashing a checkpoint, fetching a model's
// client parts): bars on a terminal, a plain line every few seconds in a log file, or one JSON
// object per event. Always on stderr, through the tools' log, so --log-level warn silences it.
import cliProgress from 'cli-progress'
import type { Log } from './log.ts'
import { logSettings, setLogWriter } from './log.ts'

/** What the runtime reports (its ProgressEvent; p2p does not depend on the runtime). */
export interface ProgressReport {
  task: string
  done: number
  total: number
  unit: string
  model?: string
  blocks?: [number, number]
  file?: string
}

export type ProgressStyle = 'bars' | 'lines' | 'json'

/** json with --json or --log-format json; bars when stderr is a terminal; plain lines otherwise. */
export function progressStyle (opts: { json?: boolean } = {}): ProgressStyle {
  if (opts.json === true || logSettings().format === 'json') return 'json'
  return process.stderr.isTTY === true ? 'bars' : 'lines'
}

/** "loading blocks 0:11 of small", "hashing small", "fetching small". */
export function progressLabel (e: ProgressReport): string {
  const model = e.model ?? 'the model'
  if (e.task === 'load') return `loading ${e.blocks != null ? `blocks ${e.blocks[0]}:${e.blocks[1]} of ` : ''}${model}`
  if (e.task === 'hash') return `hashing ${model} (computing its id: a full read, once per checkpoint)`
  if (e.task === 'fetch') return `fetching the client parts of ${model}`
  return `${e.task} ${model}`
}

function mib (bytes: number): string { return (bytes / 2 ** 20).toFixed(1) }

/** "loading blocks 0:11 of small: 412.0/980.0 MiB (42%)". */
export function progressLine (e: ProgressReport): string {
  const pct = e.total > 0 ? Math.floor((100 * e.done) / e.total) : 100
  return `${progressLabel(e)}: ${mib(e.done)}/${mib(e.total)} MiB (${pct}%)`
}

export interface ProgressReporterOptions {
  log: Log
  style?: ProgressStyle
  /** Plain lines: the least time between two lines of one task (its first and last always print). */
  lineIntervalMs?: number
}

/** A listener for the runtime's progress events, showing them as `style` says. */
export function progressReporter (opts: ProgressReporterOptions): (e: ProgressReport) => void {
  const style = opts.style ?? progressStyle()
  const { log } = opts
  if (style === 'json') return (e) => { log.jsonEvent('progress', progressLine(e), { ...e }) }
  if (style === 'lines') {
    const every = opts.lineIntervalMs ?? 5000
    const last = new Map<string, number>()
    return (e) => {
      const key = taskKey(e)
      const final = e.done >= e.total
      const prev = last.get(key)
      if (!final && prev != null && performance.now() - prev < every) return
      if (final) last.delete(key); else last.set(key, performance.now())
      log.info(progressLine(e))
    }
  }
  return terminalBars(log)
}

function taskKey (e: ProgressReport): string { return `${e.task} ${e.model ?? ''} ${e.blocks?.join(':') ?? ''}` }

/** cli-progress bars on stderr; log lines print above them while any bar runs. */
function terminalBars (log: Log): (e: ProgressReport) => void {
  let multi: cliProgress.MultiBar | undefined
  const bars = new Map<string, { bar: cliProgress.SingleBar, finished: boolean }>()
  return (e) => {
    if (!log.enabled('info')) return
    const key = taskKey(e)
    if (multi == null) {
      multi = new cliProgress.MultiBar({
        stream: process.stderr,
        format: '{label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {duration_formatted}',
        hideCursor: true,
        barsize: 24,
        clearOnComplete: false,
        stopOnComplete: false
      }, cliProgress.Presets.shades_classic)
      const m = multi
      // drawn at once: a fatal error's line must be out before the process exits
      setLogWriter((line) => { m.log(line); m.update() })
    }
    let b = bars.get(key)
    const payload = { label: progressLabel(e).replace(/ \(.*\)$/, ''), doneMiB: mib(e.done), totalMiB: mib(e.total) }
    if (b == null || b.finished) {
      if (b != null) multi.remove(b.bar)
      b = { bar: multi.create(Math.max(e.total, 1), e.done, payload), finished: false }
      bars.set(key, b)
    }
    b.bar.setTotal(Math.max(e.total, 1))
    b.bar.update(e.total > 0 ? e.done : 1, payload)
    if (e.done >= e.total) b.finished = true
    if ([...bars.values()].every(x => x.finished)) {
      multi.stop()
      multi = undefined
      bars.clear()
      setLogWriter(undefined)
    }
  }
}
