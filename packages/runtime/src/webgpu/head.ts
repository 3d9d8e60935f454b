/// <reference types="@webgpu/types" />
import type { HeadKernel } from '../head-kernel.ts'
import type { GpuContext } from './device.ts'
import { GpuLinear, upload, storage, createStepBuffer, dispatchLinear, stepSlots, submitAndRead, serially } from './linear.ts'
import type { LinearBinding, WeightPart } from './linear.ts'

interface HeadScratch { rows: number, generation: number, x: GPUBuffer, logits: GPUBuffer, readback: GPUBuffer, lm: LinearBinding }

/**
 * The head recorded after a span's step in the same command buffer: one row of the step's output
 * in, its logits `[vocab]` into `readback`. `key` changes when the buffers it binds do (commands
 * recorded ahead are reused only under the same key).
 */
export interface GpuHeadTail {
  key: string
  record: (encoder: GPUCommandEncoder, x: GPUBuffer, row: number) => void
  readback: GPUBuffer
  bytes: number
}

let heads = 0

/**
 * The LM head on the GPU: final norm and logits `[rows, vocab]` in one matrix-vector kernel (the
 * norm inside it; rows in groups of 8), so rows batched from several sessions give bitwise the
 * logits each would get alone.
 */
export interface GpuHeadWeights {
  hiddenSize: number
  vocabSize: number
  rmsNormEps: number
  norm: Float32Array
  /** `[vocab, hidden]` as stored. */
  lmHead: WeightPart
}

export function gpuHeadKernel (gpu: GpuContext, w: GpuHeadWeights): HeadKernel {
  const { device } = gpu
  const H = w.hiddenSize
  const V = w.vocabSize
  const norm = upload(device, w.norm, 'final norm')
  const lmHead = GpuLinear.upload(gpu, 'lm_head', [w.lmHead])
  const step = createStepBuffer(device, 1)
  let scratch: HeadScratch | undefined
  const id = ++heads
  let generation = 0
  // the rows the step slot holds: a local model's decode writes it once, not every token
  let stepRows = -1
  const setRows = (rows: number): void => {
    if (rows !== stepRows) device.queue.writeBuffer(step, 0, stepSlots(rows))
    stepRows = rows
  }
  // one call at a time: calls share the scratch and readback buffers
  const serial = serially()

  const ensure = (rows: number): HeadScratch => {
    if (scratch != null && scratch.rows >= rows) return scratch
    let cap = Math.max(8, scratch?.rows ?? 0)
    while (cap < rows) cap *= 2
    if (scratch != null) for (const b of [scratch.x, scratch.logits, scratch.readback]) b.destroy()
    const x = storage(device, cap * H * 4, 'head x')
    const logits = storage(device, cap * V * 4, 'logits')
    const readback = device.createBuffer({ label: 'logits readback', size: cap * V * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    scratch = { rows: cap, generation: ++generation, x, logits, readback, lm: lmHead.bind(device, x, logits, step, { norm: { weight: norm, eps: w.rmsNormEps } }) }
    return scratch
  }

  const run = async (x: Float32Array, rows: number): Promise<Float32Array> => {
    const t0 = performance.now()
    const s = ensure(rows)
    device.queue.writeBuffer(s.x, 0, x.buffer, x.byteOffset, rows * H * 4)
    setRows(rows)
    const encoder = device.createCommandEncoder()
    const pass = encoder.beginComputePass()
    dispatchLinear(pass, s.lm, rows, true)
    pass.end()
    return await submitAndRead(gpu, encoder, s.logits, s.readback, rows * V * 4, 'the LM head', t0)
  }

  const tail = (): GpuHeadTail => {
    const s = ensure(1)
    setRows(1)
    return {
      key: `${id}/${s.generation}`,
      record: (encoder, x, row) => {
        encoder.copyBufferToBuffer(x, row * H * 4, s.x, 0, H * 4)
        const pass = encoder.beginComputePass()
        dispatchLinear(pass, s.lm, 1, true)
        pass.end()
        encoder.copyBufferToBuffer(s.logits, 0, s.readback, 0, V * 4)
      },
      readback: s.readback,
      bytes: V * 4
    }
  }

  return {
    logits: async (x, rows) => await serial(async () => await run(x, rows)),
    tail: async (use) => await serial(async () => await use(tail())),
    dispose: async () => {
      // after the calls already queued
      await serial(async () => {})
      norm.destroy(); lmHead.destroy(); step.destroy()
      if (scratch != null) for (const b of [scratch.x, scratch.logits, scratch.readback]) b.destroy()
      scratch = undefined
    }
  }
}
