import { Worker } from 'node:worker_threads'
import { availableParallelism } from 'node:os'
import type { Arena, KernelExports } from './arena.ts'
import { kernelsModule } from './arena.ts'

// Rows split across worker threads over the arena's shared memory, synchronously: the calling
// thread posts the job in a shared control array, wakes the workers with Atomics.notify, runs its
// own rows, then Atomics.wait's until every worker is done (Node allows waiting on the main thread).
// Why threads: one thread of these kernels is compute-bound (6–9 GB/s of q8_0 blocks, 5–6 of q4_K,
// docs/benchmarks.md "CPU quantized kernels") while one core streams ~21 GB/s and two 26–28
// (compute-notes), so each added core adds compute that memory can still feed; llama.cpp, which
// Plexus is compared with at equal threads, splits rows across cores the same way. Rows, not
// columns: each thread writes its own outputs, no reduction. Scaling on an idle machine is still
// to be measured (the machine was saturated when the benchmark ran).

/** One matrix product, by row ranges (pointers into `arena`'s memory). */
export interface MatmulJob {
  kernel: 'q8_0' | 'q4_K' | 'q5_K' | 'q6_K' | 'bf16' | 'f16' | 'f32'
  w: number, rows: number, cols: number, xq: number, xd: number, xbs: number, tokens: number, y: number
}

/**
 * Attention of one session's rows (ops.c `attention`), split by heads: thread t takes its share
 * of the heads, with its own `workStride` bytes of scores at `work + t · workStride`.
 */
export interface AttentionJob {
  kernel: 'attention'
  q: number, qs: number, rows: number, first: number, heads: number, kvHeads: number, d: number
  kc: number, vc: number, cap: number, scale: number, out: number, os: number, work: number, workStride: number
}

/**
 * Super-blocks 0..blocks of float32 `x` quantized to q4_K at `y` (quantize.c), split by blocks:
 * thread t works in its own `workStride` bytes at `work + t · workStride`.
 */
export interface QuantizeJob {
  kernel: 'quantize_q4_K'
  x: number, y: number, blocks: number, work: number, workStride: number
}

export type Job = MatmulJob | AttentionJob | QuantizeJob

/** Thread t's heads of `heads` split `n` ways. */
export function headRange (heads: number, n: number, t: number): [number, number] {
  const per = Math.ceil(heads / n)
  return [Math.min(heads, t * per), Math.min(heads, (t + 1) * per)]
}

/** Thread t's share (of n) of a job: its rows of a product, its heads of an attention, its blocks to quantize. */
export function runShare (k: KernelExports, half: number, j: Job, t: number, n: number): void {
  if (j.kernel === 'quantize_q4_K') {
    const [b0, b1] = rowRange(j.blocks, n, t)
    if (b0 < b1) k.quantize_q4_K(j.x, j.y, b0, b1, half, j.work + t * j.workStride)
    return
  }
  if (j.kernel === 'attention') {
    const [h0, h1] = headRange(j.heads, n, t)
    if (h0 < h1) k.attention(j.q, j.qs, j.rows, j.first, j.heads, j.kvHeads, j.d, j.kc, j.vc, j.cap, j.scale, j.out, j.os, j.work + t * j.workStride, h0, h1)
    return
  }
  const [r0, r1] = rowRange(j.rows, n, t)
  if (r0 >= r1) return
  if (j.kernel === 'q8_0') k.matmul_q8_0(j.w, j.rows, j.cols, j.xq, j.xd, j.tokens, j.y, r0, r1, half)
  else if (j.kernel === 'bf16' || j.kernel === 'f16' || j.kernel === 'f32') k[`matmul_${j.kernel}`](j.w, j.rows, j.cols, j.xq, j.tokens, j.y, r0, r1)
  else k[`matmul_${j.kernel}`](j.w, j.rows, j.cols, j.xq, j.xd, j.xbs, j.tokens, j.y, r0, r1, half)
}

// control words (Int32Array over a SharedArrayBuffer), shared with kernel-worker.ts: the job's
// kernel, then its fields in the order of JOB_FIELDS from `args` (floats as their bits)
export const CTL = { gen: 0, pending: 1, stop: 2, failed: 3, arena: 4, half: 5, threads: 6, kernel: 7, ready: 8, args: 9, size: 25 }

const KERNELS = ['q8_0', 'q4_K', 'bf16', 'q5_K', 'q6_K', 'f32', 'f16', 'attention', 'quantize_q4_K'] as const
const MATMUL_FIELDS = ['w', 'rows', 'cols', 'xq', 'xd', 'xbs', 'tokens', 'y'] as const
const ATTENTION_FIELDS = ['q', 'qs', 'rows', 'first', 'heads', 'kvHeads', 'd', 'kc', 'vc', 'cap', 'scale', 'out', 'os', 'work', 'workStride'] as const
const QUANTIZE_FIELDS = ['x', 'y', 'blocks', 'work', 'workStride'] as const
const FIELDS: Partial<Record<Job['kernel'], readonly string[]>> = { attention: ATTENTION_FIELDS, quantize_q4_K: QUANTIZE_FIELDS }
const fieldsOf = (kernel: Job['kernel']): readonly string[] => FIELDS[kernel] ?? MATMUL_FIELDS

const bits = new Int32Array(1)
const bitsF = new Float32Array(bits.buffer)

function writeJob (c: Int32Array, j: Job): void {
  c[CTL.kernel] = KERNELS.indexOf(j.kernel)
  const fields = j as unknown as Record<string, number>
  fieldsOf(j.kernel).forEach((name, i) => {
    if (name === 'scale') { bitsF[0] = fields[name]; c[CTL.args + i] = bits[0] } else c[CTL.args + i] = fields[name]
  })
}

/** The job the control array holds (kernel-worker.ts). */
export function readJob (c: Int32Array): Job {
  const kernel = KERNELS[c[CTL.kernel]]
  const j: Record<string, unknown> = { kernel }
  fieldsOf(kernel).forEach((name, i) => {
    if (name === 'scale') { bits[0] = c[CTL.args + i]; j[name] = bitsF[0] } else j[name] = c[CTL.args + i]
  })
  return j as unknown as Job
}

/** Below this many weight·token products (or query·key products) a job runs on the calling thread: waking costs ~20–50 µs. */
const MIN_SPLIT = 1 << 18

/** Thread t's rows of `rows` split `n` ways (multiples of 4, so threads do not share cache lines of y). */
export function rowRange (rows: number, n: number, t: number): [number, number] {
  const per = Math.ceil(rows / n / 4) * 4
  return [Math.min(rows, t * per), Math.min(rows, (t + 1) * per)]
}

/** How long the first job waits for the kernel threads to start before it runs on this thread alone. */
const START_DEADLINE_MS = 30_000

/**
 * Node options for the kernel threads: inherited (Node drops the per-process ones), except that a
 * worker given `--input-type` (as `node --input-type=module -e …` has) refuses to start: then this
 * process's options less those of its main script, or none where Node refuses the rest.
 */
function startWorker (workerData: unknown): Worker {
  const url = new URL('./kernel-worker.ts', import.meta.url)
  const a = process.execArgv
  const execArgv: string[] = []
  for (let i = 0; i < a.length; i++) {
    if (['-e', '--eval', '-p', '--print', '--input-type'].includes(a[i])) i++ // and its value
    else if (!/^--(eval|print|input-type)=/.test(a[i])) execArgv.push(a[i])
  }
  if (execArgv.length === a.length) return new Worker(url, { workerData })
  try {
    return new Worker(url, { workerData, execArgv })
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw err
    return new Worker(url, { workerData, execArgv: [] })
  }
}

class Pool {
  readonly threads: number
  private readonly ctl = new Int32Array(new SharedArrayBuffer(CTL.size * 4))
  private readonly workers: Worker[] = []
  /** arenas whose memory every worker has */
  private readonly shared = new Set<number>()

  constructor (threads: number) {
    this.threads = threads
    for (let i = 1; i < threads; i++) {
      const w = startWorker({ ctl: this.ctl, index: i, module: kernelsModule() })
      // a worker that cannot load would otherwise take the process down once its error arrives
      w.on('error', err => { process.stderr.write(`plexus: CPU kernel thread ${i} stopped: ${err.message}\n`) })
      w.unref()
      this.workers.push(w)
    }
  }

  /**
   * Waits until every worker has started. The caller blocks its thread, so a worker that fails to
   * load can only be seen by its silence: false after START_DEADLINE_MS.
   */
  started (): boolean {
    const c = this.ctl
    const deadline = performance.now() + START_DEADLINE_MS
    for (let r = Atomics.load(c, CTL.ready); r < this.workers.length; r = Atomics.load(c, CTL.ready)) {
      const left = deadline - performance.now()
      if (left <= 0) return false
      Atomics.wait(c, CTL.ready, r, left)
    }
    return true
  }

  run (arena: Arena, j: Job): void {
    const c = this.ctl
    if (!this.shared.has(arena.id)) {
      // the workers take it with receiveMessageOnPort when a job names this arena
      for (const w of this.workers) w.postMessage({ arena: arena.id, memory: arena.memory })
      this.shared.add(arena.id)
    }
    c[CTL.arena] = arena.id; c[CTL.half] = arena.half; c[CTL.threads] = this.threads
    writeJob(c, j)
    Atomics.store(c, CTL.pending, this.workers.length)
    Atomics.add(c, CTL.gen, 1)
    Atomics.notify(c, CTL.gen)
    runShare(arena.kernels, arena.half, j, 0, this.threads)
    for (let p = Atomics.load(c, CTL.pending); p !== 0; p = Atomics.load(c, CTL.pending)) Atomics.wait(c, CTL.pending, p)
    if (Atomics.exchange(c, CTL.failed, 0) !== 0) throw new Error('a CPU kernel thread failed; its share of this job is missing')
  }

  close (): void {
    Atomics.store(this.ctl, CTL.stop, 1)
    Atomics.add(this.ctl, CTL.gen, 1)
    Atomics.notify(this.ctl, CTL.gen)
  }
}

let threads = Math.max(1, Number(process.env.PLEXUS_CPU_THREADS ?? availableParallelism()) || 1)
let pool: Pool | undefined

/** Threads the kernels split rows over (this one included). Default: PLEXUS_CPU_THREADS, else every core. */
export function kernelThreads (): number { return threads }

/** Sets the kernels' thread count for this JS thread (workers start at the next product). */
export function setKernelThreads (n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`kernel threads: ${n} is not a positive integer`)
  threads = n
  if (pool != null && pool.threads !== n) { pool.close(); pool = undefined }
}

/** Threads attention's heads are split over for this job (1: run it here). */
export function attentionThreads (heads: number, rows: number, keys: number, d: number): number {
  return threads === 1 || heads < 2 || heads * rows * keys * d < MIN_SPLIT ? 1 : threads
}

/** Runs an attention job over `attentionThreads(…)` threads (each needs its workStride of scores). */
export function splitHeads (arena: Arena, j: AttentionJob, n: number): void {
  if (n === 1) { runShare(arena.kernels, arena.half, j, 0, 1); return }
  runPooled(arena, j)
}

/** Runs a quantize job over every kernel thread (one super-block takes ~35 µs: any tensor is worth it). */
export function splitBlocks (arena: Arena, j: QuantizeJob): void {
  if (threads === 1 || j.blocks < 2 * threads) { runShare(arena.kernels, arena.half, j, 0, 1); return }
  runPooled(arena, j)
}

/** Runs `j` on the pool, started at the first job; where its threads do not start, on this thread from then on. */
function runPooled (arena: Arena, j: Job): void {
  if (pool == null) {
    pool = new Pool(threads)
    if (!pool.started()) {
      pool.close()
      pool = undefined
      threads = 1
      process.stderr.write(`plexus: the CPU kernel threads did not start within ${START_DEADLINE_MS / 1000} s; the kernels run on one thread\n`)
      runShare(arena.kernels, arena.half, j, 0, 1)
      return
    }
  }
  pool.run(arena, j)
}

export function splitRows (arena: Arena, j: MatmulJob): void {
  if (threads === 1 || j.rows < 8 * threads || j.rows * j.cols * j.tokens < MIN_SPLIT) { runShare(arena.kernels, arena.half, j, 0, 1); return }
  runPooled(arena, j)
}
