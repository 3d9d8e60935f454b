// Progress of the long reads: loading blocks, hashing a checkpoint into its manifest, fetching a
// model's client parts. Listeners get few events (throttled), never one per tensor or chunk.
import type { ModelSource } from './model-source.ts'
import { blockTensorShapes, headTensorShapes } from './config.ts'

export type ProgressTask = 'load' | 'hash' | 'fetch'

export interface ProgressEvent {
  task: ProgressTask
  /** Bytes done so far, never more than `total`; the last event of a task has done === total. */
  done: number
  total: number
  unit: 'bytes'
  /** The model's name. */
  model?: string
  /** Blocks `[start, end)` being loaded. */
  blocks?: [number, number]
  /** The file being fetched. */
  file?: string
}

export type ProgressListener = (event: ProgressEvent) => void

/** Most events per second per task, the first and the last always included. */
export const PROGRESS_INTERVAL_MS = 100

/**
 * Counts one task's bytes and tells `listener`: once at the start (done 0), at most every
 * `intervalMs` after, and once at the end (`finish`, done === total).
 */
export class ProgressMeter {
  private readonly listener?: ProgressListener
  private readonly base: Omit<ProgressEvent, 'done' | 'unit'>
  private readonly intervalMs: number
  private done = 0
  private last = 0
  private finished = false

  constructor (listener: ProgressListener | undefined, base: Omit<ProgressEvent, 'done' | 'unit'>, intervalMs = PROGRESS_INTERVAL_MS) {
    this.listener = listener
    this.base = base
    this.intervalMs = intervalMs
    this.emit()
  }

  add (bytes: number, file?: string): void {
    if (this.finished) return
    this.done = Math.min(this.base.total, this.done + bytes)
    if (this.done < this.base.total && performance.now() - this.last >= this.intervalMs) this.emit(file)
  }

  finish (): void {
    if (this.finished) return
    this.done = this.base.total
    this.emit()
    this.finished = true
  }

  private emit (file?: string): void {
    this.last = performance.now()
    if (this.listener == null) return
    const event: ProgressEvent = { ...this.base, done: this.done, unit: 'bytes' }
    if (file != null) event.file = file
    // a listener's failure (a closed terminal) must not fail the load
    try { this.listener(event) } catch {}
  }
}

/** Bytes of block `part`'s tensors (or the head's) as stored, from the checkpoint's index alone. */
export async function storedPartBytes (src: ModelSource, part: number | 'head'): Promise<number> {
  const shapes = part === 'head' ? headTensorShapes(src.config) : blockTensorShapes(src.config, part)
  return await src.storedBytes([...shapes].map(([name]) => name))
}
