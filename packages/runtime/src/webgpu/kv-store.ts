/// <reference types="@webgpu/types" />
import { storage } from './linear.ts'

/** Positions a session's GPU cache holds before its first growth. */
const INITIAL_POSITIONS = 128

/**
 * One session's keys and values on the GPU, one buffer per block: keys `[cap, kvHeads·headDim]`
 * then values, f32 or f16. The buffers grow by doubling up to the session's max length (the
 * server reserves that much of its cache budget when it admits the session), so a short chat
 * does not hold a whole context's worth of GPU memory. Rolling back is only a shorter length:
 * later steps overwrite the dropped positions.
 */
export class GpuKVStore {
  readonly device: GPUDevice
  readonly blocks: number
  readonly kvDim: number
  readonly maxLength: number
  cap: number
  buffers: GPUBuffer[]
  /** Bumped whenever the buffers are replaced, so bind groups made for the old ones are rebuilt. */
  generation = 0
  /** Bind groups of this cache's kernels, keyed by the span's scratch generation. */
  bound?: { key: string, groups: unknown }
  private disposed = false

  /** Bytes per cached element: 4 (f32) or 2 (f16). */
  readonly elementBytes: number

  constructor (device: GPUDevice, blocks: number, kvDim: number, maxLength: number, elementBytes = 4) {
    this.device = device
    this.elementBytes = elementBytes
    this.blocks = blocks
    this.kvDim = kvDim
    this.maxLength = maxLength
    this.cap = Math.min(maxLength, INITIAL_POSITIONS)
    this.buffers = Array.from({ length: blocks }, (_, b) => storage(device, this.regionBytes(this.cap) * 2, `kv[${b}]`))
  }

  private regionBytes (cap: number): number { return cap * this.kvDim * this.elementBytes }

  /**
   * Makes room for `positions` (≤ maxLength), recording the copy of the `length` cached
   * positions into the new buffers on `encoder` (before the step that needs them).
   */
  reserve (positions: number, length: number, encoder: GPUCommandEncoder): void {
    if (this.disposed) throw new Error('the session\'s cache was closed')
    if (positions <= this.cap) return
    let cap = this.cap
    while (cap < positions) cap *= 2
    cap = Math.min(cap, this.maxLength)
    const used = this.regionBytes(length)
    const next = this.buffers.map((old, b) => {
      const nb = storage(this.device, this.regionBytes(cap) * 2, `kv[${b}]`)
      if (used > 0) {
        encoder.copyBufferToBuffer(old, 0, nb, 0, used)
        encoder.copyBufferToBuffer(old, this.regionBytes(this.cap), nb, this.regionBytes(cap), used)
      }
      return nb
    })
    // freed once the submitted copies that read them have run
    this.retired.push(...this.buffers)
    this.buffers = next
    this.cap = cap
    this.generation++
  }

  private retired: GPUBuffer[] = []

  /** Destroys buffers replaced by a growth (call after the step that copied them was submitted). */
  release (): void {
    for (const b of this.retired) b.destroy()
    this.retired = []
  }

  bytes (): number { return this.disposed ? 0 : this.blocks * 2 * this.regionBytes(this.cap) }

  dispose (): void {
    if (this.disposed) return
    this.disposed = true
    this.release()
    for (const b of this.buffers) b.destroy()
    this.buffers = []
    this.bound = undefined
  }
}
