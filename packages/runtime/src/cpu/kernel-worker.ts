// A kernel thread (threads.ts): waits for a job in the control array, runs its rows of it with
// the kernels instantiated over the job's arena memory, and counts itself done.
import { workerData, parentPort, receiveMessageOnPort } from 'node:worker_threads'
import type { MessagePort } from 'node:worker_threads'
import { CTL, KERNEL_CODE, ATTENTION_ARGS, rowRange, headRange, bitsFloat } from './threads.ts'
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

// the pool's control array starts at generation 0: a job posted before this thread got here
// makes the first wait return at once
let gen = 0
for (;;) {
  Atomics.wait(ctl, CTL.gen, gen)
  gen = Atomics.load(ctl, CTL.gen)
  if (Atomics.load(ctl, CTL.stop) !== 0) break
  try {
    const k = kernelsFor(ctl[CTL.arena])
    const [r0, r1] = rowRange(ctl[CTL.rows], ctl[CTL.threads], index)
    if (ctl[CTL.kernel] === KERNEL_CODE.attention) {
      const j = Object.fromEntries(ATTENTION_ARGS.map((name, i) => [name, ctl[CTL.args + i]])) as Record<typeof ATTENTION_ARGS[number], number>
      const [h0, h1] = headRange(j.heads, ctl[CTL.threads], index)
      if (h0 < h1) k.attention(j.q, j.qs, j.rows, j.first, j.heads, j.kvHeads, j.d, j.kc, j.vc, j.cap, bitsFloat(j.scale), j.out, j.os, j.work + index * j.workStride, h0, h1)
    } else if (r0 < r1) {
      const kernel = ctl[CTL.kernel]
      if (kernel === KERNEL_CODE.q8_0) k.matmul_q8_0(ctl[CTL.w], ctl[CTL.rows], ctl[CTL.cols], ctl[CTL.xq], ctl[CTL.xd], ctl[CTL.tokens], ctl[CTL.y], r0, r1, ctl[CTL.half])
      else if (kernel === KERNEL_CODE.bf16 || kernel === KERNEL_CODE.f16 || kernel === KERNEL_CODE.f32) {
        (kernel === KERNEL_CODE.bf16 ? k.matmul_bf16 : kernel === KERNEL_CODE.f16 ? k.matmul_f16 : k.matmul_f32)(ctl[CTL.w], ctl[CTL.rows], ctl[CTL.cols], ctl[CTL.xq], ctl[CTL.tokens], ctl[CTL.y], r0, r1)
      }
      else {
        // the k-quants (q8_K activations) share one signature
        const f = kernel === KERNEL_CODE.q4_K ? k.matmul_q4_K : kernel === KERNEL_CODE.q5_K ? k.matmul_q5_K : k.matmul_q6_K
        f(ctl[CTL.w], ctl[CTL.rows], ctl[CTL.cols], ctl[CTL.xq], ctl[CTL.xd], ctl[CTL.xbs], ctl[CTL.tokens], ctl[CTL.y], r0, r1, ctl[CTL.half])
      }
    }
  } catch {
    // the caller is blocked in Atomics.wait and cannot hear an 'error' event: flag it instead
    Atomics.store(ctl, CTL.failed, 1)
  }
  if (Atomics.sub(ctl, CTL.pending, 1) === 1) Atomics.notify(ctl, CTL.pending)
}
port.close()
