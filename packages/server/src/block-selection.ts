import { blockBytes, bytesPerWeight, CPU_QUANT_FORMATS, quantizationOf, storedPartBytes } from '@plexus/runtime'
import type { ModelConfig, ModelSource } from '@plexus/runtime'

/**
 * Where a node should serve: the contiguous span where the swarm is weakest. The swarm's
 * throughput for a block is the sum of the announced throughputs of its holders; a route can go
 * no faster than its weakest block, so new capacity goes where that minimum is.
 */
export interface ServedSpan { peer: string, start: number, end: number, throughput: number }

export function blockThroughputs (spans: ServedSpan[], numBlocks: number): number[] {
  const t = new Array<number>(numBlocks).fill(0)
  for (const s of spans) for (let b = Math.max(0, s.start); b < Math.min(numBlocks, s.end); b++) t[b] += s.throughput
  return t
}

/**
 * The start of the `length`-block window with the lowest bottleneck (then the lowest total):
 * uncovered blocks first. Ties are broken at random so nodes starting together spread out.
 */
export function chooseStart (spans: ServedSpan[], numBlocks: number, length: number, random: () => number = Math.random): number {
  const n = Math.min(length, numBlocks)
  const t = blockThroughputs(spans, numBlocks)
  let best: number[] = []
  let bestKey: [number, number] = [Infinity, Infinity]
  for (let s = 0; s + n <= numBlocks; s++) {
    const window = t.slice(s, s + n)
    const key: [number, number] = [Math.min(...window), window.reduce((a, b) => a + b, 0)]
    // within 1% counts as equal: measured throughputs are noisy
    const cmp = compare(key, bestKey)
    if (cmp < 0) { best = [s]; bestKey = key } else if (cmp === 0) best.push(s)
  }
  return best[Math.floor(random() * best.length)]
}

function compare (a: [number, number], b: [number, number]): number {
  for (let i = 0; i < 2; i++) {
    if (!Number.isFinite(b[i])) return -1
    const tol = 0.01 * Math.max(Math.abs(a[i]), Math.abs(b[i]))
    if (a[i] < b[i] - tol) return -1
    if (a[i] > b[i] + tol) return 1
  }
  return 0
}

export interface MovePlan {
  start: number
  end: number
  bottleneckBefore: number
  bottleneckAfter: number
  /** `improve`: this move helps by itself; `enable`: it lets another node's move help. */
  kind: 'improve' | 'enable'
}

/**
 * Whether `me` should move its span, and where: to the position that most raises the swarm's
 * bottleneck, only when that rise reaches `factor` (or an uncovered block becomes covered), and
 * never to one that would leave a block it stops serving without another holder. Sliding
 * partly over its own span is allowed, so nodes can shift together to close a gap.
 */
export function planMove (spans: ServedSpan[], me: ServedSpan, numBlocks: number, factor = 1.2, random: () => number = Math.random, lookahead = true): MovePlan | undefined {
  const others = spans.filter(s => s.peer !== me.peer)
  const without = blockThroughputs(others, numBlocks)
  // a position's worth: its bottleneck, then (while blocks are uncovered) how few are
  const worth = (t: number[]): [number, number] => [Math.min(...t), -t.filter(x => x <= 0).length]
  const before = worth(blockThroughputs([...others, me], numBlocks))
  const length = me.end - me.start
  let best: number[] = []
  let bestAfter: [number, number] = [-Infinity, -Infinity]
  const safeStarts: number[] = []
  for (let start = 0; start + length <= numBlocks; start++) {
    if (start === me.start) continue
    let safe = true
    for (let b = me.start; b < me.end && safe; b++) if ((b < start || b >= start + length) && without[b] <= 0) safe = false
    if (!safe) continue
    safeStarts.push(start)
    const after = worth(blockThroughputs([...others, { ...me, start, end: start + length }], numBlocks))
    const cmp = after[0] !== bestAfter[0] ? after[0] - bestAfter[0] : after[1] - bestAfter[1]
    if (cmp > 0) { best = [start]; bestAfter = after } else if (cmp === 0) best.push(start)
  }
  const better = best.length > 0 && (before[0] <= 0
    ? bestAfter[0] > 0 || bestAfter[1] > before[1]
    : bestAfter[0] > before[0] * factor)
  if (better) {
    const start = best[Math.floor(random() * best.length)]
    return { start, end: start + length, bottleneckBefore: before[0], bottleneckAfter: bestAfter[0], kind: 'improve' }
  }
  // Blocks are uncovered and no single move helps: make room with a move that changes nothing by
  // itself but lets another node cover a hole next round (nodes otherwise wait for each other).
  if (!lookahead || before[0] > 0) return undefined
  for (const start of safeStarts) {
    const moved = { ...me, start, end: start + length }
    const now = [...others, moved]
    if (worth(blockThroughputs(now, numBlocks))[1] < before[1]) continue
    if (others.some(o => planMove(now, o, numBlocks, factor, () => 0, false)?.kind === 'improve')) {
      return { start, end: start + length, bottleneckBefore: before[0], bottleneckAfter: before[0], kind: 'enable' }
    }
  }
  return undefined
}

/**
 * Bytes one block takes on `backend` when its linear weights are stored as `format`: a GPU holds
 * them as stored; the CPU engine keeps the formats its kernels read (q8_0, q4_k, q5_k, q6_k, bf16,
 * f16) as stored and widens the rest to float32 (one copy: no XNNPACK packing since the blocks
 * left tfjs-wasm).
 */
export function bytesPerBlock (cfg: ModelConfig, backend: string, format: string): number {
  if (backend === 'webgpu') return blockBytes(cfg) / 4 * bytesPerWeight(format)
  return blockBytes(cfg, CPU_QUANT_FORMATS.includes(format) ? format : 'f32')
}

/**
 * Bytes a block of `src` takes on `backend`: bytesPerBlock for its q_proj's format, or, when the
 * file is stored in the CPU kernels' formats, block 0's bytes as stored if more (a Q4_K_M file
 * keeps v and down in Q6_K, which bytesPerBlock would count as Q4_K).
 */
export async function blockBytesOf (src: ModelSource, backend: string, format: string): Promise<number> {
  const perFormat = bytesPerBlock(src.config, backend, format)
  if (backend === 'webgpu' || !CPU_QUANT_FORMATS.includes(format) || quantizationOf(src) != null) return perFormat
  return Math.max(perFormat, await storedPartBytes(src, 0))
}

/** Blocks this machine can hold: the weight budget over bytesPerBlock, at least 1, at most the model. */
export function blocksThatFit (budgetBytes: number, bytesPerBlock: number, numBlocks: number): number {
  return Math.max(1, Math.min(numBlocks, Math.floor(budgetBytes / bytesPerBlock)))
}

/** How far above the swarm's typical (or this server's own) throughput an announced figure still counts. */
export const MAX_THROUGHPUT_CLAIM_FACTOR = 4

/**
 * Announced throughputs are each server's own word (one announcing 1e9 would make every block it
 * holds look served): each counts for at most MAX_THROUGHPUT_CLAIM_FACTOR × the larger of the
 * median announced figure and `own`, this server's measured throughput.
 */
export function capThroughputs (spans: ServedSpan[], own = 0): ServedSpan[] {
  const sorted = spans.map(s => s.throughput).filter(t => Number.isFinite(t) && t > 0).sort((a, b) => a - b)
  const median = sorted.length > 0 ? sorted[Math.floor((sorted.length - 1) / 2)] : 0
  const ceiling = MAX_THROUGHPUT_CLAIM_FACTOR * Math.max(median, own)
  return spans.map(s => ({ ...s, throughput: Math.min(Number.isFinite(s.throughput) ? s.throughput : 0, ceiling) }))
}
