// The 16-bit float conversions (dtype.ts): bit-exact against the conversions they replaced and
// against the engine's own Float16Array, NaN, infinities and subnormals included.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { f32ToF16, f32ToBf16, f32ToF16Bits, f32ToBf16Bits, toFloat32 } from '@plexus/runtime'
import { halfTable, f16BitsToF32, f16ToF32, bf16ToF32 } from '../src/dtype.ts'

const digest = (a: ArrayBufferView): string => createHash('sha256').update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest('hex')
const bitsOf = (x: Float32Array): Uint32Array => new Uint32Array(x.buffer, x.byteOffset, x.length)
const floatsOf = (bits: Uint32Array): Float32Array => new Float32Array(bits.buffer, bits.byteOffset, bits.length)

/** The engine's own half floats (Node ≥ 24), to check against. */
const Float16 = (globalThis as unknown as { Float16Array: Float32ArrayConstructor }).Float16Array

/** Every 16-bit pattern. */
const ALL16 = Uint16Array.from({ length: 65536 }, (_, i) => i)

/**
 * float32 bit patterns around every rounding edge: each sign and exponent with the mantissas at
 * the f16 (13 dropped bits) and bf16 (16 dropped bits) ties and their neighbours, plus 64
 * pseudo-random mantissas each (zeros, subnormals, infinities and NaNs with payloads among them).
 */
function edgeFloats (): Uint32Array {
  const M = [0, 1, 2, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xffff, 0x10000, 0x3ff000, 0x400000, 0x7fe000, 0x7ff000, 0x7ff001, 0x7fffff]
  let s = 12345
  const next = (): number => { s = (Math.imul(s, 1103515245) + 12345) >>> 0; return s >>> 9 }
  const out: number[] = []
  for (let sign = 0; sign < 2; sign++) {
    for (let e = 0; e < 256; e++) {
      for (const m of M) out.push(((sign << 31) | (e << 23) | m) >>> 0)
      for (let i = 0; i < 64; i++) out.push(((sign << 31) | (e << 23) | next()) >>> 0)
    }
  }
  return Uint32Array.from(out)
}

describe('dtype conversions', () => {
  const edges = edgeFloats()
  const floats = floatsOf(edges)
  const isNan32 = (b: number): boolean => (b & 0x7fffffff) > 0x7f800000

  it('give bit for bit what the previous implementations gave (digests of their outputs)', () => {
    // computed with safetensors.ts toFloat32/halfTable and safetensors-write.ts f32ToF16/f32ToBf16
    // (and the scalar f32ToF16Bits/f32ToBf16Bits on every non-NaN input) before they moved here
    assert.equal(edges.length, 43008)
    assert.equal(digest(halfTable()), '385ff5fe69182797cda5f1827e20cf423f4416bc9246f27d0eec27cac9039259')
    assert.equal(digest(f16ToF32(ALL16)), '385ff5fe69182797cda5f1827e20cf423f4416bc9246f27d0eec27cac9039259')
    assert.equal(digest(bf16ToF32(ALL16)), '9207d7eb28680a098c73dbe536d1ff7b94311dc417b9a385e0af6660683e93ca')
    assert.equal(digest(f32ToF16(floats)), '61ac7112b587376c1dfa57a9b72a2976a62ad42facd2534cc5c06300d8bf2f31')
    assert.equal(digest(f32ToBf16(floats)), '6895d7b558d3a970d2db00b302d1193dd2b9d9e0426f1df3ec8902b13ec9c34e')
    const nonNan = Array.from(floats).filter(x => !Number.isNaN(x))
    assert.equal(digest(Uint16Array.from(nonNan, f32ToF16Bits)), '03fa5dc206b1bbd583ffa77c95f81faf4c972faa7bddb107d1407027c688ee22')
    assert.equal(digest(Uint16Array.from(nonNan, f32ToBf16Bits)), '7f1d8f565829a624baa5bc1298ce691a68f261ca4283f0a10f6b2ebd33719d07')
    // the safetensors reader widens through the same conversions
    const bytes = new Uint8Array(ALL16.buffer)
    assert.deepEqual(bitsOf(toFloat32(bytes, 'F16')), bitsOf(f16ToF32(ALL16)))
    assert.deepEqual(bitsOf(toFloat32(bytes, 'BF16')), bitsOf(bf16ToF32(ALL16)))
  })

  it('widen every half exactly as the engine does, and every half but NaN round-trips', () => {
    const engine = new Float16(ALL16.buffer)
    const ours = f16ToF32(ALL16)
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(engine[h])) { assert.ok(Number.isNaN(ours[h]), `${h.toString(16)}`); continue }
      assert.ok(Object.is(ours[h], engine[h]), `f16 ${h.toString(16)}: ${ours[h]} vs ${engine[h]}`)
      assert.equal(f16BitsToF32(h), ours[h])
      assert.equal(f32ToF16Bits(ours[h]), h, `f16 ${h.toString(16)} round trip`)
    }
    const wide = bf16ToF32(ALL16)
    for (let h = 0; h < 65536; h++) {
      assert.equal(bitsOf(wide)[h], h << 16 >>> 0)
      if (!isNan32(h << 16)) assert.equal(f32ToBf16Bits(wide[h]), h, `bf16 ${h.toString(16)} round trip`)
    }
  })

  it('narrow to half as the engine rounds (nearest even, subnormals, overflow to inf); NaN stays a quiet NaN with its top payload', () => {
    const got = f32ToF16(floats)
    const engine = new Uint16Array(new Float16(floats).buffer)
    for (let i = 0; i < edges.length; i++) {
      const b = edges[i]
      if (isNan32(b)) {
        assert.equal(got[i], ((b >>> 16) & 0x8000) | 0x7e00 | ((b >>> 13) & 0x3ff), `NaN ${b.toString(16)}`)
        assert.ok(Number.isNaN(f16BitsToF32(got[i])))
      } else {
        assert.equal(got[i], engine[i], `f32 ${b.toString(16)}`)
      }
    }
    // a few by hand: the largest half, the first value that rounds to inf, the smallest subnormal and a tie to zero
    assert.equal(f32ToF16Bits(65504), 0x7bff)
    assert.equal(f32ToF16Bits(65520), 0x7c00)
    assert.equal(f32ToF16Bits(-Infinity), 0xfc00)
    assert.equal(f32ToF16Bits(2 ** -24), 0x0001)
    assert.equal(f32ToF16Bits(2 ** -25), 0x0000)
    assert.equal(f32ToF16Bits(-0), 0x8000)
  })

  it('narrow to bf16 rounding to nearest even; NaN stays NaN (quiet), infinities stay', () => {
    const got = f32ToBf16(floats)
    for (let i = 0; i < edges.length; i++) {
      const b = edges[i]
      if (isNan32(b)) {
        assert.equal(got[i], ((b >>> 16) | 0x40) & 0xffff, `NaN ${b.toString(16)}`)
        continue
      }
      // the top half, plus one when the dropped half is over a tie, or a tie with an odd top
      const top = b >>> 16
      const low = b & 0xffff
      const want = (low > 0x8000 || (low === 0x8000 && (top & 1) === 1)) ? top + 1 : top
      assert.equal(got[i], want & 0xffff, `f32 ${b.toString(16)}`)
    }
    assert.equal(f32ToBf16Bits(Infinity), 0x7f80)
    assert.equal(f32ToBf16Bits(-Infinity), 0xff80)
    // the largest finite float32 rounds up to inf, as round-to-nearest-even does
    assert.equal(f32ToBf16Bits(floatsOf(Uint32Array.of(0x7f7fffff))[0]), 0x7f80)
  })

  it('convert views at an offset, into a given output', () => {
    const buf = new Float32Array([0, 1.5, -2, 65504, 0])
    const view = buf.subarray(1, 4)
    const out = new Uint16Array(5)
    assert.equal(f32ToF16(view, out.subarray(2)).length, 3)
    assert.deepEqual([...out], [0, 0, 0x3e00, 0xc000, 0x7bff])
    assert.deepEqual([...f32ToBf16(view)], [0x3fc0, 0xc000, 0x4780])
    assert.deepEqual([...f16ToF32(out.subarray(2))], [1.5, -2, 65504])
  })
})
