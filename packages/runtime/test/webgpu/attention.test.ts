// Attention against the paged cache, for several sessions in one dispatch that also stores their
// new keys and values, against a float64 reference: GQA ratios 1/2/4/8, head_dim 64/80/128, f32
// and f16 caches, keys past the fast kernel's 256-key chunk, pages out of order, positions past a
// rolled-back cache, a prefill of several rows beside decode rows.
import assert from 'node:assert/strict'
import { toFloat32, f32ToF16 } from '@plexus/runtime'
import { attentionKernel, attentionGroups, stepPaging } from '../../src/webgpu/attention.ts'
import type { AttentionShape } from '../../src/webgpu/attention.ts'
import { KV_PAGE } from '../../src/webgpu/kv-store.ts'
import { testGpu, skipWebgpu, runKernel, randoms, relErr } from '../support/gpu.ts'
import type { GpuContext } from '../../src/webgpu/device.ts'

/** A session of the step: positions cached before, new rows, and its pages in each of 2 blocks. */
interface Session { length: number, tokens: number, pages: number[][] }

describe('WebGPU attention on the paged KV cache', function () {
  let gpu: GpuContext
  before(async function () {
    if (skipWebgpu) { console.warn('    WebGPU attention tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
    gpu = await testGpu()
  })

  const P = KV_PAGE
  // sessions: mid-page with 3 new rows; past the first 256-key chunk; a fresh one of 2 rows
  const layout = [{ length: 70, tokens: 3 }, { length: 290, tokens: 1 }, { length: 0, tokens: 2 }]

  /** Each session's pages in blocks 0 and 1, drawn from one shuffled set of ids (page 0 unused: ids need not start at 0). */
  function pageSessions (): { sessions: Session[], pages: number } {
    const counts = layout.map(s => Math.ceil((s.length + s.tokens) / P) + 1)
    const total = 2 * counts.reduce((a, b) => a + b, 0) + 1
    const ids = Array.from({ length: total - 1 }, (_, i) => i + 1)
    const r = randoms(ids.length, 99)
    ids.sort((a, b) => r[a - 1] - r[b - 1])
    const sessions = layout.map((s, i) => ({ ...s, pages: [ids.splice(0, counts[i]), ids.splice(0, counts[i])] }))
    return { sessions, pages: total }
  }

  for (const [heads, kvHeads, D, kv] of [[4, 4, 64, 'f32'], [8, 2, 128, 'f32'], [8, 1, 64, 'f16'], [8, 2, 128, 'f16'], [6, 3, 64, 'f32'], [4, 2, 80, 'f16']] as const) {
    it(`${heads}/${kvHeads} heads, head_dim ${D}, ${kv} cache: 3 sessions in one dispatch`, async () => {
      const shape: AttentionShape = { numHeads: heads, numKvHeads: kvHeads, headDim: D, kv }
      const QD = heads * D; const KVD = kvHeads * D; const QKV = QD + 2 * KVD
      const { sessions, pages } = pageSessions()
      const rows = sessions.reduce((n, s) => n + s.tokens, 0)
      const qkv = randoms(rows * QKV, 11)
      // every page holds garbage first: positions < length stand for cached keys and values, the
      // rest for a rolled-back draft that the new rows overwrite
      const elems = pages * 2 * P * KVD
      const initF32 = randoms(elems, 12)
      const cache = kv === 'f16' ? new Uint32Array(f32ToF16(initF32).buffer) : initF32
      const asF32 = (c: Float32Array | Uint32Array): Float32Array => kv === 'f16' ? toFloat32(new Uint8Array(c.buffer, 0, elems * 2), 'F16') : new Float32Array(c.buffer, 0, elems)
      const keyAt = (s: Session, j: number): number => s.pages[1][Math.floor(j / P)] * 2 * P * KVD + (j % P) * KVD
      const rowsOf: Array<{ s: Session, pos: number }> = sessions.flatMap(s => Array.from({ length: s.tokens }, (_, t) => ({ s, pos: s.length + t })))
      const rot = new Float32Array(rows * 2 * D)
      const angle = (p: number, i: number): number => p / Math.pow(10000, (2 * (i % (D / 2))) / D)
      rowsOf.forEach(({ pos }, row) => {
        for (let i = 0; i < D; i++) {
          rot[row * 2 * D + i] = Math.cos(angle(pos, i))
          rot[row * 2 * D + D + i] = (i < D / 2 ? -1 : 1) * Math.sin(angle(pos, i))
        }
      })
      const pagingOf = (ss: Session[], n: number): Uint32Array => stepPaging(ss.map(s => ({ tokens: s.tokens, length: s.length, pages: (b: number) => s.pages[b] })), n, 2)
      const paging = pagingOf(sessions, rows)

      const rotate = (v: ArrayLike<number>, o: number, row: number): number[] => Array.from({ length: D }, (_, i) => {
        const j = i < D / 2 ? i + D / 2 : i - D / 2
        return v[o + i] * rot[row * 2 * D + i] + v[o + j] * rot[row * 2 * D + D + i]
      })
      const ref = Float64Array.from(asF32(cache))
      rowsOf.forEach(({ s, pos }, row) => {
        for (let h = 0; h < kvHeads; h++) {
          const src = row * QKV + QD + h * D
          const k = rotate(qkv, src, row)
          for (let i = 0; i < D; i++) {
            ref[keyAt(s, pos) + h * D + i] = k[i]
            ref[keyAt(s, pos) + P * KVD + h * D + i] = qkv[src + KVD + i]
          }
        }
      })
      // the reference reads keys and values as the kernel stored them (f16: rounded)
      const attention = (cacheOut: Float32Array): Float64Array => {
        const expected = new Float64Array(rows * QD)
        rowsOf.forEach(({ s, pos }, row) => {
          for (let h = 0; h < heads; h++) {
            const q = rotate(qkv, row * QKV + h * D, row)
            const kvh = Math.floor(h / (heads / kvHeads))
            const keys = pos + 1
            const scores = Array.from({ length: keys }, (_, j) => {
              let d = 0
              for (let i = 0; i < D; i++) d += q[i] * cacheOut[keyAt(s, j) + kvh * D + i]
              return d / Math.sqrt(D)
            })
            const m = Math.max(...scores)
            const e = scores.map(v => Math.exp(v - m))
            const z = e.reduce((a, b) => a + b, 0)
            for (let i = 0; i < D; i++) {
              let o = 0
              for (let j = 0; j < keys; j++) o += e[j] / z * cacheOut[keyAt(s, j) + P * KVD + kvh * D + i]
              expected[row * QD + h * D + i] = o
            }
          }
        })
        return expected
      }
      for (const legacy of [false, true]) {
        const attend = async (q: Float32Array, r: Float32Array, m: Uint32Array, n: number): Promise<Float32Array[]> =>
          await runKernel(gpu, attentionKernel(shape, legacy), [{ data: q, binding: 'read' }, { data: r, binding: 'read' }, { data: cache, binding: 'rw' }, { size: n * QD, binding: 'rw' }, 'step', { data: m, binding: 'read' }], // slot 2: block 1 of the step, whose page tables are not block 0's
            [[n, 0], [n, 0], [n, 1]], attentionGroups(shape, n), 2)
        const [cacheRaw, att] = await attend(qkv, rot, paging, rows)
        const which = legacy ? 'legacy' : 'fast'
        const cacheOut = asF32(cacheRaw)
        assert.ok(relErr(cacheOut, ref) < (kv === 'f16' ? 1e-3 : 1e-6), `${which} kernel, stored keys and values: ${relErr(cacheOut, ref)}`)
        const expected = attention(cacheOut)
        const e = relErr(att.subarray(0, rows * QD), expected)
        assert.ok(e < 1e-5, `${which} kernel: ${e}`)
        // the second session alone gives its row bit for bit as in the batch
        const [, alone] = await attend(qkv.slice(3 * QKV, 4 * QKV), rot.slice(3 * 2 * D, 4 * 2 * D), pagingOf([sessions[1]], 1), 1)
        assert.deepEqual(Array.from(alone.subarray(0, QD)), Array.from(att.subarray(3 * QD, 4 * QD)), `${which} kernel: batched ≠ alone`)
      }
    })
  }
})
