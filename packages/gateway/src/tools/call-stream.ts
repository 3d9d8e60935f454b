// Generated text to content and calls, incrementally: text is held back while a call may be
// starting, and each call is emitted once its JSON is complete. Parsing a whole text is the same
// parser fed once, so streamed and non-streamed responses agree by construction.
import type { CallSyntax, ParsedCall, ParseStep } from './types.ts'

/** End (exclusive) of the JSON object or array starting at `text[start]`; -1 while incomplete. */
export function jsonValueEnd (text: string, start: number): number {
  let depth = 0
  let inString = false
  for (let i = start; i < text.length; i++) {
    const c = text[i]
    if (inString) {
      if (c === '\\') i++
      else if (c === '"') inString = false
    } else if (c === '"') {
      inString = true
    } else if (c === '{' || c === '[') {
      depth++
    } else if (c === '}' || c === ']') {
      if (--depth === 0) return i + 1
    }
  }
  return -1
}

/** Length of the longest suffix of `text` that is a proper prefix of one of `markers`. */
function partialMarker (text: string, markers: string[]): number {
  let best = 0
  for (const m of markers) {
    for (let k = Math.min(m.length - 1, text.length); k > best; k--) {
      if (text.endsWith(m.slice(0, k))) { best = k; break }
    }
  }
  return best
}

export class CallStream {
  readonly #syntax: CallSyntax
  #pending = ''
  /** Inside a call region: the marker that opened it ('' for a bare one). */
  #region: string | undefined
  /** No content yet since the start or the last call: a bare call may start here. */
  #atStart = true
  /** A call just ended: whitespace after it is not content. */
  #afterCall = false
  /** Whitespace before the open region: content again if the region is no call. */
  #gap = ''
  readonly calls: ParsedCall[] = []
  content = ''

  constructor (syntax: CallSyntax) { this.#syntax = syntax }

  push (text: string): ParseStep {
    this.#pending += text
    const step: ParseStep = { content: '', calls: [] }
    while (this.#advance(step));
    return step
  }

  /** The end of generation: a region left open ends here (a reply may stop before its closing tag), the rest is content. */
  finish (): ParseStep {
    const step: ParseStep = { content: '', calls: [] }
    const opener = this.#region
    if (opener != null && opener !== '' && this.#syntax.close != null) {
      const calls = parseCalls(this.#syntax, this.#pending)
      if (calls != null) {
        step.calls.push(...calls)
        this.calls.push(...calls)
        this.#region = undefined
        this.#pending = ''
        return step
      }
    }
    while (this.#region != null && this.#advance(step));
    const rest = this.#region != null ? this.#gap + this.#region + this.#pending : this.#pending
    this.#pending = ''
    this.#region = undefined
    this.#emit(step, this.#afterCall ? rest.trimStart() : rest)
    return step
  }

  #emit (step: ParseStep, text: string): void {
    if (text === '') return
    step.content += text
    this.content += text
    this.#atStart = false
    this.#afterCall = false
  }

  /** One move of the state machine; false when it needs more text. */
  #advance (step: ParseStep): boolean {
    const s = this.#syntax
    if (this.#region != null) return this.#inRegion(step)
    if (this.#afterCall || this.#atStart) {
      const trimmed = this.#pending.trimStart()
      if (trimmed === '') return false
      if (this.#afterCall) { this.#pending = trimmed; this.#afterCall = false }
      // An open marker may itself start like a bare call ('[TOOL_CALLS]'): the marker wins.
      const marker = s.open.some(m => m.startsWith(trimmed) || trimmed.startsWith(m))
      if (this.#atStart && s.bareStart != null && trimmed[0] === s.bareStart && !marker) {
        this.#gap = this.#pending.slice(0, this.#pending.length - trimmed.length)
        this.#pending = trimmed
        this.#region = ''
        return true
      }
    }
    let at = -1
    let marker = ''
    for (const m of s.open) {
      const i = this.#pending.indexOf(m)
      if (i >= 0 && (at < 0 || i < at)) { at = i; marker = m }
    }
    if (at >= 0) {
      // Whitespace between content and a call belongs to neither.
      const before = this.#pending.slice(0, at)
      this.#emit(step, before.trimEnd())
      this.#gap = before.slice(before.trimEnd().length)
      this.#pending = this.#pending.slice(at + marker.length)
      this.#region = marker
      return true
    }
    // Held: a possible marker's start, and the whitespace before it (dropped if a call follows).
    const partial = partialMarker(this.#pending, s.open)
    const before = this.#pending.slice(0, this.#pending.length - partial)
    const held = partial + before.length - before.trimEnd().length
    this.#emit(step, this.#pending.slice(0, this.#pending.length - held))
    this.#pending = this.#pending.slice(this.#pending.length - held)
    return false
  }

  #inRegion (step: ParseStep): boolean {
    const s = this.#syntax
    const opener = this.#region!
    let body: string
    let rest: string
    if (s.close != null && opener !== '') {
      const end = this.#pending.indexOf(s.close)
      if (end < 0) return false
      body = this.#pending.slice(0, end)
      rest = this.#pending.slice(end + s.close.length)
    } else {
      const start = this.#pending.length - this.#pending.trimStart().length
      if (start === this.#pending.length) return false
      const c = this.#pending[start]
      const end = c === '{' || c === '[' ? jsonValueEnd(this.#pending, start) : start
      if (end < 0) return false
      body = this.#pending.slice(0, end)
      rest = this.#pending.slice(end)
    }
    const calls = parseCalls(s, body)
    this.#region = undefined
    this.#pending = rest
    const gap = this.#gap
    this.#gap = ''
    if (calls == null) {
      // Not a call after all: the text is content, as the model wrote it.
      this.#emit(step, gap + opener + body + (s.close != null && opener !== '' ? s.close : ''))
      return true
    }
    step.calls.push(...calls)
    this.calls.push(...calls)
    this.#afterCall = true
    this.#atStart = true
    return true
  }
}

function parseCalls (s: CallSyntax, body: string): ParsedCall[] | undefined {
  const text = body.trim()
  if (text === '') return undefined
  try { return s.callsOf(JSON.parse(text)) } catch { return undefined }
}

/** A whole generated text as content (null when only calls) and calls. */
export function parseOutput (syntax: CallSyntax, text: string): { content: string | null, calls: ParsedCall[] } {
  const p = new CallStream(syntax)
  p.push(text)
  p.finish()
  return { content: p.calls.length > 0 && p.content === '' ? null : p.content, calls: p.calls }
}
