// Chat templates come with the model (a peer's tokenizer_config.json): a template may loop for
// minutes or build gigabytes. They are rendered in a worker thread, one at a time, with a time
// budget and an output cap; a worker over budget is terminated (a fresh one takes the next).
import { Worker } from 'node:worker_threads'
import type { ChatMessage, ChatTemplateOptions } from './chat-template.ts'

export type TemplateErrorCode = 'template-timeout' | 'template-too-large' | 'template-invalid'

/** A chat template that did not render: over its time budget, its output or memory cap, or broken. */
export class TemplateError extends Error {
  readonly code: TemplateErrorCode
  constructor (code: TemplateErrorCode, message: string) { super(message); this.name = 'TemplateError'; this.code = code }
}

export interface TemplateRequest { id: number, config: object, messages: ChatMessage[], opts: ChatTemplateOptions, maxChars: number }
export type TemplateReply = { id: number, ok: true, text: string } | { id: number, ok: false, code: TemplateErrorCode, message: string }

export interface RenderLimits {
  /** Wall-clock budget of one render, once it starts. Default 2 s. */
  timeoutMs?: number
  /** Most characters of output. Default 4 Mi. */
  maxChars?: number
}

const DEFAULT_TIMEOUT_MS = 2000
const DEFAULT_MAX_CHARS = 4 << 20
// the worker's heap: a template building a huge string dies here, not in the process
const WORKER_HEAP_MB = 256

interface Job { req: TemplateRequest, timeoutMs: number, resolve: (s: string) => void, reject: (e: Error) => void, worker?: Worker }

let worker: Worker | undefined
let busy: Job | undefined
const queue: Job[] = []
let nextId = 1

function spawn (): Worker {
  const w = new Worker(new URL('./template-worker.ts', import.meta.url), { resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB } })
  // an idle worker keeps no process alive
  w.unref()
  w.on('message', (r: TemplateReply) => {
    if (busy?.worker !== w || r.id !== busy.req.id) return
    finish(r.ok ? undefined : new TemplateError(r.code, r.code === 'template-invalid' ? r.message : `chat template ${r.message}`), r.ok ? r.text : undefined)
  })
  w.on('error', (err: Error & { code?: string }) => {
    if (worker === w) worker = undefined
    if (busy?.worker !== w) return
    const oom = err.code === 'ERR_WORKER_OUT_OF_MEMORY'
    finish(new TemplateError(oom ? 'template-too-large' : 'template-invalid', oom ? `chat template used more than ${WORKER_HEAP_MB} MiB while rendering` : `chat template renderer failed: ${err.message}`))
  })
  w.on('exit', () => {
    if (worker === w) worker = undefined
    // a terminated worker's job was settled already; another's is no longer its own
    if (busy?.worker === w) finish(new TemplateError('template-invalid', 'chat template renderer exited'))
  })
  return w
}

let timer: ReturnType<typeof setTimeout> | undefined

function finish (err?: Error, text?: string): void {
  const job = busy
  if (job == null) return
  busy = undefined
  clearTimeout(timer)
  worker?.unref()
  if (err != null) job.reject(err)
  else job.resolve(text!)
  pump()
}

function pump (): void {
  if (busy != null) return
  const job = queue.shift()
  if (job == null) return
  busy = job
  worker ??= spawn()
  // held while a render is in flight: a caller awaiting it keeps the process up
  worker.ref()
  const w = job.worker = worker
  timer = setTimeout(() => {
    worker = undefined
    finish(new TemplateError('template-timeout', `chat template did not render within ${job.timeoutMs} ms`))
    void w.terminate()
  }, job.timeoutMs)
  w.postMessage(job.req)
}

/**
 * applyChatTemplate off the event loop, within `limits`. Throws TemplateError (code
 * template-timeout, template-too-large or template-invalid); the process keeps serving.
 */
export async function renderChatTemplate (tokenizerConfig: object, messages: ChatMessage[], opts: ChatTemplateOptions = {}, limits: RenderLimits = {}): Promise<string> {
  const req: TemplateRequest = { id: nextId++, config: tokenizerConfig, messages, opts, maxChars: limits.maxChars ?? DEFAULT_MAX_CHARS }
  return await new Promise<string>((resolve, reject) => {
    queue.push({ req, timeoutMs: limits.timeoutMs ?? DEFAULT_TIMEOUT_MS, resolve, reject })
    pump()
  })
}
