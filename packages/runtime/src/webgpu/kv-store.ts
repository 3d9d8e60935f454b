/// <reference types="@webgpu/types" />
// Sessions' keys and values on the GPU, in pages. Each block of a span keeps one buffer of
// fixed-size pages (the pool); a session holds, per block it covers, a list of pages in position
// order. The kernels find a row's positions through its session's page table (attention.ts), so
// every session of a step is appended to and attended in one dispatch per block, and a growing
// session takes pages instead of copying its cache.
import { storage } from './linear.ts'

/** Positions one page holds. */
export const KV_PAGE = 32

/** One block's pages: a buffer that grows by doubling (page ids stay), and its free pages. */
interface BlockPages {
  buffer?: GPUBuffer
  /** Pages the buffer holds. */
  capacity: number
  inUse: number
  free: number[]
  /** Bumped when the buffer is replaced, so bind groups made for the old one are rebuilt. */
  generation: number
}

/** The pages of every block of one span engine. */
export class GpuKVPool {
  readonly device: GPUDevice
  /** Bytes of one page: keys `[KV_PAGE, kvDim]`, then values. */
  readonly pageBytes: number
  /** Pages one block's buffer may hold: the device's largest storage binding. */
  private readonly maxPages: number
  private readonly blocks: BlockPages[] = []

  /** `elementBytes`: 4 (f32) or 2 (f16) per cached element. */
  constructor (device: GPUDevice, kvDim: number, elementBytes: number, maxBindingBytes: number) {
    this.device = device
    this.pageBytes = 2 * KV_PAGE * kvDim * elementBytes
    this.maxPages = Math.floor(Math.min(maxBindingBytes, device.limits.maxBufferSize) / this.pageBytes)
  }

  private block (b: number): BlockPages {
    this.blocks[b] ??= { capacity: 0, inUse: 0, free: [], generation: 0 }
    return this.blocks[b]
  }

  /** Block `b`'s buffer (undefined while no session holds a page of it) and its generation. */
  buffer (b: number): { buffer?: GPUBuffer, generation: number } {
    const p = this.block(b)
    return { buffer: p.buffer, generation: p.generation }
  }

  /** Takes `n` pages of block `b`. */
  take (b: number, n: number): number[] {
    const p = this.block(b)
    if (p.free.length < n) this.grow(p, b, p.inUse + n)
    p.inUse += n
    return p.free.splice(p.free.length - n, n).reverse()
  }

  /**
   * A larger buffer for block `b`, its pages copied by a submission of their own: queued before
   * the step that needs them, and done even if that step is never submitted.
   */
  private grow (p: BlockPages, b: number, pages: number): void {
    if (pages > this.maxPages) {
      throw new Error(`block ${b}'s KV cache would need ${pages} pages of ${this.pageBytes} bytes, more than the GPU's largest buffer binding holds (${this.maxPages})`)
    }
    let capacity = Math.max(4, 2 * p.capacity)
    while (capacity < pages) capacity *= 2
    capacity = Math.min(capacity, this.maxPages)
    const buffer = storage(this.device, capacity * this.pageBytes, `kv pages[${b}]`)
    if (p.buffer != null) {
      const encoder = this.device.createCommandEncoder()
      encoder.copyBufferToBuffer(p.buffer, 0, buffer, 0, p.capacity * this.pageBytes)
      this.device.queue.submit([encoder.finish()])
      // WebGPU frees it once the submitted work that reads it is done
      p.buffer.destroy()
    }
    // the stack pops the lowest new id first
    for (let id = capacity - 1; id >= p.capacity; id--) p.free.push(id)
    p.buffer = buffer
    p.capacity = capacity
    p.generation++
  }

  /** Gives pages of block `b` back; a block whose pages are all free lets its buffer go. */
  give (b: number, pages: number[]): void {
    const p = this.block(b)
    p.free.push(...pages)
    p.inUse -= pages.length
    if (p.inUse === 0 && p.buffer != null) {
      // a step that used it was submitted already; WebGPU frees it once that work is done
      p.buffer.destroy()
      p.buffer = undefined
      p.capacity = 0
      p.free = []
      p.generation++
    }
  }

  dispose (): void {
    for (const p of this.blocks) {
      p.buffer?.destroy()
      Object.assign(p, { buffer: undefined, capacity: 0, inUse: 0, free: [], generation: p.generation + 1 })
    }
  }
}

/**
 * One session's keys and values on the GPU: pages of the blocks `[first, first + blocks)` of its
 * span engine, taken as positions come (the server reserves the session's max length in its
 * cache budget when it admits it). Rolling back is only a shorter length: later steps overwrite
 * the dropped positions.
 */
export class GpuKVStore {
  readonly pool: GpuKVPool
  /** The engine block of this store's first block. */
  readonly first: number
  readonly blocks: number
  readonly maxLength: number
  /** Page ids per block, in position order (every block holds as many). */
  private readonly pages: number[][]
  private disposed = false

  constructor (pool: GpuKVPool, first: number, blocks: number, maxLength: number) {
    this.pool = pool
    this.first = first
    this.blocks = blocks
    this.maxLength = maxLength
    this.pages = Array.from({ length: blocks }, () => [])
  }

  /** Page ids of engine block `block`. */
  pagesOf (block: number): number[] { return this.pages[block - this.first] }

  /** Makes room for `positions` (≤ maxLength), in every block or none. */
  reserve (positions: number): void {
    if (this.disposed) throw new Error('the session\'s cache was closed')
    if (positions > this.maxLength) throw new Error(`${positions} positions exceed the session's max length ${this.maxLength}`)
    const more = Math.ceil(positions / KV_PAGE) - this.pages[0].length
    if (more <= 0) return
    const taken: number[][] = []
    try {
      for (let i = 0; i < this.blocks; i++) taken.push(this.pool.take(this.first + i, more))
    } catch (err) {
      taken.forEach((pages, i) => this.pool.give(this.first + i, pages))
      throw err
    }
    taken.forEach((pages, i) => this.pages[i].push(...pages))
  }

  bytes (): number { return this.disposed ? 0 : this.blocks * this.pages[0].length * this.pool.pageBytes }

  dispose (): void {
    if (this.disposed) return
    this.disposed = true
    this.pages.forEach((list, i) => this.pool.give(this.first + i, list))
    this.pages.forEach(list => { list.length = 0 })
  }
}
