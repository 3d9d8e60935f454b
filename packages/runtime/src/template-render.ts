// Chat templates come with the model (a peer's tokenizer_config.json): a template may loop for
// minutes or build gigabytes. They are rendered in a worker thread, one at a time, with a time
// budget and an output cap; a worker over budget is terminated (a fresh one takes the next).
import { Worker } from 'node:worker_threads'
import type { ChatMessage, ChatTemplateOptions } from './chat-template.ts'
import { PlexusError } from './errors.ts'
import { WorkerRpc } from './worker-rpc.ts'

export type TemplateErrorCode = 'template-timeout' | 'template-too-large' | 'template-invalid'

/** A chat template that did not render: over its time budget, its output or memory cap, or broken. */
export class TemplateError extends PlexusError {
  declare readonly code: TemplateErrorCode
  constructor (code: TemplateErrorCode, message: string) { super(code, message, { httpStatus: 400 }); this.name = 'TemplateError' }
}

export interface TemplateRequest { config: object, messages: ChatMessage[], opts: ChatTemplateOptions, maxChars: number }

/** What the template worker (template-worker.ts) answers; it throws TemplateError. */
export interface TemplateWorkerApi {
  render (req: TemplateRequest): string
}

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

interface Job { req: TemplateRequest, timeoutMs: number, resolve: (s: string) => void, reject: (e: Error) => void }

let renderer: WorkerRpc<TemplateWorkerApi> | undefined
let busy = false
const queue: Job[] = []

function spawn (): WorkerRpc<TemplateWorkerApi> {
  const w = new Worker(new URL('./template-worker.ts', import.meta.url), { resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB } })
  // held only while a render is in flight: a caller awaiting it keeps the process up, an idle worker none
  return new WorkerRpc<TemplateWorkerApi>(w, {
    label: 'the template worker',
    errors: { TemplateError: e => new TemplateError(e.code as TemplateErrorCode, e.message) },
    unrefWhenIdle: true
  })
}

/** Whatever stopped a render, as the TemplateError its caller gets. */
function templateError (err: Error & { code?: string }): TemplateError {
  if (err instanceof TemplateError) return err
  if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') return new TemplateError('template-too-large', `chat template used more than ${WORKER_HEAP_MB} MiB while rendering`)
  return new TemplateError('template-invalid', `chat template renderer failed: ${err.message}`)
}

/** One job on the current worker; a worker over budget or dead is dropped (the next job spawns one). */
async function render (job: Job): Promise<void> {
  const r = renderer ??= spawn()
  try {
    job.resolve(await r.callWithin('render', job.req, job.timeoutMs, () => new TemplateError('template-timeout', `chat template did not render within ${job.timeoutMs} ms`)))
  } catch (err) {
    // a worker past its budget (terminated) or dead is dropped: the next job spawns one
    if (r.failure != null && renderer === r) renderer = undefined
    job.reject(templateError(err as Error))
  }
}

async function pump (): Promise<void> {
  if (busy) return
  busy = true
  for (let job = queue.shift(); job != null; job = queue.shift()) await render(job)
  busy = false
}

/**
 * applyChatTemplate off the event loop, within `limits`. Throws TemplateError (code
 * template-timeout, template-too-large or template-invalid); the process keeps serving.
 */
export async function renderChatTemplate (tokenizerConfig: object, messages: ChatMessage[], opts: ChatTemplateOptions = {}, limits: RenderLimits = {}): Promise<string> {
  const req: TemplateRequest = { config: tokenizerConfig, messages, opts, maxChars: limits.maxChars ?? DEFAULT_MAX_CHARS }
  return await new Promise<string>((resolve, reject) => {
    queue.push({ req, timeoutMs: limits.timeoutMs ?? DEFAULT_TIMEOUT_MS, resolve, reject })
    void pump()
  })
}
