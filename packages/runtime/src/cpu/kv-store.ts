import { allocate } from './arena.ts'
import type { Arena } from './arena.ts'

/** Positions a session's cache holds before its first growth. */
const INITIAL_POSITIONS = 128

/** One block's keys then values, `[kvHeads][cap][headDim]` float32 each, in one arena. */
export interface KVRegion { arena: Arena, at: number, bytes: number }

/**
 * One session's keys and values for the CPU engine, in the wasm memory the attention kernel
 * reads: per block, keys `[kvHeads][cap][headDim]` then values. Each block's region sits in the
 * arena of that block's weights when it has room (the attention then runs there without a copy),
 * else in any arena. Regions grow by doubling up to the session's max length (the server reserves
 * that much of its cache budget when it admits the session); rolling back is only a shorter
 * length: later steps overwrite the dropped positions.
 */
export class CpuKVStore {
  readonly kvHeads: number
  readonly headDim: number
  readonly maxLength: number
  cap: number
  readonly regions: KVRegion[]
  private readonly homes: Array<Arena | undefined>

  /** `homes[b]`: the arena to try first for block b; undefined places it anywhere. */
  constructor (homes: Array<Arena | undefined>, kvHeads: number, headDim: number, maxLength: number) {
    this.homes = homes
    this.kvHeads = kvHeads
    this.headDim = headDim
    this.maxLength = maxLength
    this.cap = Math.min(maxLength, INITIAL_POSITIONS)
    this.regions = []
    try {
      for (const home of homes) this.regions.push(this.place(home, this.cap))
    } catch (err) {
      this.dispose()
      throw err
    }
  }

  get blocks (): number { return this.homes.length }

  private place (home: Arena | undefined, cap: number): KVRegion {
    const bytes = 2 * cap * this.kvHeads * this.headDim * 4
    const at = home?.alloc(bytes)
    if (home != null && at !== undefined) return { arena: home, at, bytes }
    return { ...allocate(bytes), bytes }
  }

  /** Address of block b's keys (values follow at `cap` positions per head further). */
  keys (b: number): number { return this.regions[b].at }
  values (b: number): number { return this.regions[b].at + this.cap * this.kvHeads * this.headDim * 4 }

  /** Makes room for `positions` (≤ maxLength), keeping the `length` cached ones. */
  reserve (positions: number, length: number): void {
    if (this.regions.length !== this.homes.length) throw new Error('the session\'s cache was closed')
    if (positions <= this.cap) return
    let cap = this.cap
    while (cap < positions) cap *= 2
    cap = Math.min(cap, this.maxLength)
    const d = this.headDim
    // every new region first: a failed allocation leaves the cache as it was
    const nexts: KVRegion[] = []
    try {
      for (const home of this.homes) nexts.push(this.place(home, cap))
    } catch (err) {
      for (const r of nexts) r.arena.release(r.at, r.bytes)
      throw err
    }
    for (let b = 0; b < this.regions.length; b++) {
      const old = this.regions[b]
      const next = nexts[b]
      const from = new Float32Array(old.arena.memory.buffer, old.at, old.bytes / 4)
      const to = new Float32Array(next.arena.memory.buffer, next.at, next.bytes / 4)
      // keys then values, each head's positions contiguous
      for (let kv = 0; kv < 2; kv++) {
        for (let h = 0; h < this.kvHeads; h++) {
          const src = (kv * this.kvHeads + h) * this.cap * d
          to.set(from.subarray(src, src + length * d), (kv * this.kvHeads + h) * cap * d)
        }
      }
      old.arena.release(old.at, old.bytes)
      this.regions[b] = next
    }
    this.cap = cap
  }

  bytes (): number { return this.regions.reduce((n, r) => n + r.bytes, 0) }

  dispose (): void {
    for (const r of this.regions) r.arena.release(r.at, r.bytes)
    this.regions.length = 0
  }
}
