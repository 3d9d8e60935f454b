// A kernel thread (threads.ts): waits for a job in the control array, runs its share of it with
// the kernels instantiated over the job's arena memory, and counts itself done.
import { workerData, parentPort, receiveMessageOnPort } from 'node:worker_threads'
import type { MessagePort } from 'node:worker_threads'
import { CTL, readJob, runShare } from './threads.ts'
import { wasm } from './wasm-api.ts'
import type { WasmMemory, WasmModule } from './wasm-api.ts'
import type { KernelExports } from './arena.ts'

const { ctl, index, module } = workerData as { ctl: Int32Array, index: number, module: WasmModule }
const port = parentPort as MessagePort
const arenas = new Map<number, KernelExports>()

function kernelsFor (id: number): KernelExports {
  for (;;) {
    const k = arenas.get(id)
    if (k != null) return k
    // posted before the job that names it; delivery across threads can lag the notify briefly
    const m = receiveMessageOnPort(port)?.message as { arena: number, memory: WasmMemory } | undefined
    if (m == null) { Atomics.wait(ctl, CTL.stop, 0, 1); continue }
    arenas.set(m.arena, new wasm.Instance(module, { env: { memory: m.memory } }).exports as unknown as KernelExports)
  }
}

// started: the pool's first job waits for every thread to say so
Atomics.add(ctl, CTL.ready, 1)
Atomics.notify(ctl, CTL.ready)

// the pool's control array starts at generation 0: a job posted before this thread got here
// makes the first wait return at once
let gen = 0
for (;;) {
  Atomics.wait(ctl, CTL.gen, gen)
  gen = Atomics.load(ctl, CTL.gen)
  if (Atomics.load(ctl, CTL.stop) !== 0) break
  try {
    runShare(kernelsFor(ctl[CTL.arena]), ctl[CTL.half], readJob(ctl), index, ctl[CTL.threads])
  } catch {
    // the caller is blocked in Atomics.wait and cannot hear an 'error' event: flag it instead
    Atomics.store(ctl, CTL.failed, 1)
  }
  if (Atomics.sub(ctl, CTL.pending, 1) === 1) Atomics.notify(ctl, CTL.pending)
}
port.close()
