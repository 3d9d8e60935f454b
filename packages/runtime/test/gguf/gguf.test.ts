// GGUF as a model source: ggml's block formats decoded bit for bit as llama.cpp decodes them,
// files written by scripts/lib/gguf.ts reading back to the safetensors tensors, and errors that
// name the file and the tensor.
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile, readFile, truncate, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, Checkpoint, Span, ModelHead, generate, dequantize, GgufFile, GgufCheckpoint, GGUF_VALUE, ggmlTypeByName, f32ToF16, unpermuteRotary, rawFloat32, parseModelConfig, blockTensorShapes, headTensorShapes, toFloat32 } from '@plexus/runtime'
import type { SessionPipeline } from '@plexus/runtime'
import { writeGguf, permuteRotary, llama3RopeFactors } from '../../../../scripts/lib/gguf.ts'
import { llamaCppLogits } from '../../../../scripts/lib/llama-baseline.ts'
import { FIXTURE_NAMES, fixtureDir, golden, maxAbsDiff } from '../../../../test/support/fixtures.ts'
import { buildGguf, tensorTypeOffset, requireLlamaCpp, llamaCppDequantizer } from '../../../../test/support/gguf.ts'
import { blocksOf, rng, finiteHalf, LLAMA_CPP_SYMBOL } from '../../../../test/support/gguf-blocks.ts'
import { llama3ScalingFromFactors } from '../../src/gguf/config.ts'
import type { DequantizableType } from '../../src/gguf/types.ts'

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length)
function assertBitsEqual (got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`)
  const g = bits(got); const w = bits(want)
  for (let i = 0; i < g.length; i++) {
    if (g[i] !== w[i]) assert.fail(`${what}: element ${i}: got ${got[i]} (0x${g[i].toString(16)}), want ${want[i]} (0x${w[i].toString(16)})`)
  }
}

describe('GGUF', function () {
  let tmp: string
  before(async () => { tmp = await mkdtemp(join(tmpdir(), 'plexus-gguf-')) })
  after(async () => { await rm(tmp, { recursive: true, force: true }) })

  describe('block formats, by ggml-quants.c\'s definitions', () => {
    it('F16 and BF16 widen exactly, subnormals and infinities included', () => {
      const h = Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0xfc00, 0x3555)
      const want = [1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, -0, Infinity, -Infinity, Math.fround(1 + 0x155 / 1024) / 4]
      const got = dequantize('F16', new Uint8Array(h.buffer), h.length)
      want.forEach((w, i) => assert.ok(Object.is(got[i], w), `f16 0x${h[i].toString(16)} → ${got[i]}, want ${w}`))
      const b = Uint16Array.of(0x3f80, 0xc0a0, 0x0001, 0x7f80)
      assert.deepEqual([...dequantize('BF16', new Uint8Array(b.buffer), 4)], [1, -5, 2 ** -133, Infinity])
    })

    // Each format: blocks packed by the test from chosen scales and quants, and the values the
    // ggml definition gives for them, computed separately from the decoder under test.
    for (const type of ['Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'] as const) {
      it(`${type}: known blocks decode to ggml's values`, () => {
        const { bytes, n, want } = blocksOf(type, 3, rng(7))
        assert.equal(bytes.length, n / ggmlTypeByName(type).blockSize * ggmlTypeByName(type).typeSize)
        assertBitsEqual(dequantize(type, bytes, n), want, type)
      })
    }

    it('refuses byte counts that are not whole blocks', () => {
      assert.throws(() => dequantize('Q4_K', new Uint8Array(143), 256), /Q4_K: 256 elements need 144 bytes, got 143/)
      assert.throws(() => dequantize('Q8_0', new Uint8Array(34), 31), /not a whole number of 32-element blocks/)
    })
  })

  describe('against llama.cpp\'s own dequantizers (node-llama-cpp\'s libggml-base)', function () {
    let deq: Awaited<ReturnType<typeof llamaCppDequantizer>> | undefined
    before(async function () {
      await requireLlamaCpp(this)
      deq = await llamaCppDequantizer()
    })
    after(async () => { await deq?.dispose() })

    for (const type of ['F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q5_K', 'Q6_K'] as const) {
      it(`${type}: random blocks are bit-for-bit equal`, async () => {
        const t = ggmlTypeByName(type)
        const nBlocks = t.blockSize === 1 ? 4096 : 64
        const r = rng(1234 + t.id)
        const bytes = new Uint8Array(nBlocks * t.typeSize)
        for (let i = 0; i < bytes.length; i++) bytes[i] = r() * 256
        // Scales (and f16 data) are kept finite: NaN payloads are not part of the contract.
        finiteHalf(type, bytes)
        const n = nBlocks * t.blockSize
        assertBitsEqual(dequantize(type as DequantizableType, bytes, n), await deq!.dequantize(LLAMA_CPP_SYMBOL[type], bytes, n), type)
      })
    }
  })

  describe('the file format', () => {
    it('reads metadata of every type, honours general.alignment, and reads tensors by position', async () => {
      const V = GGUF_VALUE
      const q = blocksOf('Q4_K', 2, rng(3))
      const q6 = blocksOf('Q6_K', 1, rng(4))
      const path = join(tmp, 'all-types.gguf')
      await writeFile(path, buildGguf([
        ['general.alignment', { type: V.UINT32, value: 64 }],
        ['u8', { type: V.UINT8, value: 255 }], ['i8', { type: V.INT8, value: -128 }],
        ['u16', { type: V.UINT16, value: 65535 }], ['i16', { type: V.INT16, value: -32768 }],
        ['i32', { type: V.INT32, value: -7 }], ['f32', { type: V.FLOAT32, value: 0.5 }],
        ['f64', { type: V.FLOAT64, value: Math.PI }], ['b', { type: V.BOOL, value: true }],
        ['s', { type: V.STRING, value: 'héllo ▁' }], ['u64', { type: V.UINT64, value: 2n ** 40n }],
        ['u64big', { type: V.UINT64, value: 2n ** 63n }], ['i64', { type: V.INT64, value: -(2n ** 40n) }],
        ['strs', { type: V.ARRAY, elemType: V.STRING, value: ['a', '', '<0x0A>'] }],
        ['ints', { type: V.ARRAY, elemType: V.INT32, value: [1, -2, 3] }],
        ['floats', { type: V.ARRAY, elemType: V.FLOAT32, value: [0.25, -1] }]
      ], [
        { name: 'a', dims: [256, 2], type: ggmlTypeByName('Q4_K').id, data: q.bytes.subarray(0, 288) },
        { name: 'b', dims: [256], type: ggmlTypeByName('Q6_K').id, data: q6.bytes },
        { name: 'c', dims: [3], type: ggmlTypeByName('F32').id, data: new Uint8Array(Float32Array.of(1, 2, 3).buffer) }
      ], { alignment: 64 }))
      const f = await GgufFile.open(path)
      try {
        assert.equal(f.version, 3)
        assert.equal(f.alignment, 64)
        assert.deepEqual(Object.fromEntries(f.metadata), {
          'general.alignment': 64, u8: 255, i8: -128, u16: 65535, i16: -32768, i32: -7, f32: 0.5, f64: Math.PI, b: true,
          s: 'héllo ▁', u64: 2 ** 40, u64big: 2n ** 63n, i64: -(2 ** 40), strs: ['a', '', '<0x0A>'], ints: [1, -2, 3], floats: [0.25, -1]
        })
        assert.deepEqual([...f.tensors.keys()], ['a', 'b', 'c'])
        const a = f.tensor('a')
        assert.deepEqual([a.dims, a.shape, a.type.name, a.elements, a.end - a.begin], [[256, 2], [2, 256], 'Q4_K', 512, 288])
        for (const t of f.tensors.values()) assert.equal(t.begin % 64, 0, `${t.name} is aligned`)
        assertBitsEqual(await f.readFloat32('a'), q.want.subarray(0, 512), 'a')
        assertBitsEqual(await f.readFloat32('b'), q6.want, 'b')
        assert.deepEqual([...await f.readFloat32('c')], [1, 2, 3])
      } finally { await f.close() }
    })
  })

  describe('files written by scripts/lib/gguf.ts from the golden fixtures', () => {
    for (const name of FIXTURE_NAMES) {
      for (const dtype of ['f32', 'f16'] as const) {
        it(`${name} (${dtype}): same config and tensors as the safetensors checkpoint`, async () => {
          const path = join(tmp, `${name}-${dtype}.gguf`)
          await writeGguf(fixtureDir(name), path, { dtype })
          const ref = await Checkpoint.open(fixtureDir(name))
          const g = await GgufCheckpoint.open(path)
          try {
            assert.deepEqual(g.config, ref.config)
            const cfg = ref.config
            const names = [...headTensorShapes(cfg).keys()]
            for (let b = 0; b < cfg.numLayers; b++) names.push(...blockTensorShapes(cfg, b).keys())
            for (const t of names) {
              assert.ok(g.has(t), t)
              const want = await ref.readFloat32(t)
              const shape = (await ref.readRaw(t)).shape
              // The writer stores matrices as f16 and keeps vectors f32: round the same way.
              const rounded = dtype === 'f16' && shape.length > 1 ? toFloat32(new Uint8Array(f32ToF16(want).buffer), 'F16') : want
              // Tensors come as stored: the writer's f16 matrices stay f16.
              const raw = await g.readRaw(t)
              assert.equal(raw.dtype, dtype === 'f16' && shape.length > 1 ? 'F16' : 'F32', t)
              assert.deepEqual(raw.shape, shape, t)
              assertBitsEqual(rawFloat32(raw), rounded, t)
              assertBitsEqual(await g.readFloat32(t), rounded, t)
            }
            assert.equal(g.has('lm_head.weight'), !cfg.tieWordEmbeddings)
          } finally { await ref.close(); await g.close() }
        })
      }
    }

    it('a span reads only its own blocks\' tensors', async () => {
      const path = join(tmp, 'reads.gguf')
      await writeGguf(fixtureDir('tiny-llama3-sharded-bf16'), path, { dtype: 'f16' })
      const ckpt = await GgufCheckpoint.open(path)
      const read: string[] = []
      const orig = ckpt.file.readBytes.bind(ckpt.file)
      ckpt.file.readBytes = async (n: string) => { read.push(n); return await orig(n) }
      try {
        const raws = await ckpt.readBlockRaw(2)
        assert.deepEqual(raws.map(r => r.name), [...blockTensorShapes(ckpt.config, 2).keys()])
        const parts = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_up', 'ffn_down']
        assert.deepEqual(read.sort(), parts.map(p => `blk.2.${p}.weight`).sort())
      } finally { await ckpt.close() }
    })

    it('recovers llama3 rope scaling from rope_freqs, with or without the original context length', () => {
      // Llama 3.1 8B and Llama 3.2 1B's rope settings.
      for (const [headDim, theta, factor] of [[128, 500000, 8], [64, 500000, 32]]) {
        const rope_scaling = { rope_type: 'llama3', factor, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }
        const cfg = parseModelConfig({ architectures: ['LlamaForCausalLM'], hidden_size: headDim * 4, num_attention_heads: 4, intermediate_size: 8, num_hidden_layers: 1, vocab_size: 8, rope_theta: theta, rope_scaling })
        const freqs = llama3RopeFactors(cfg)
        assert.deepEqual(llama3ScalingFromFactors('x.gguf', freqs, headDim, theta, 8192), rope_scaling)
        assert.deepEqual(llama3ScalingFromFactors('x.gguf', freqs, headDim, theta), rope_scaling)
      }
      assert.throws(() => llama3ScalingFromFactors('x.gguf', new Float32Array(64).fill(1), 128, 500000), /^GgufError: x\.gguf: tensor rope_freqs\.weight: holds no scaling factor above 1/)
    })

    it('undoes exactly the writer\'s rotary permutation of q/k rows', () => {
      const rows = 12; const cols = 3
      const data = Float32Array.from({ length: rows * cols }, (_, i) => i)
      for (const heads of [1, 2, 3]) assert.deepEqual(unpermuteRotary(permuteRotary(data, [rows, cols], heads), rows, heads), data)
      assert.deepEqual([...unpermuteRotary(Float32Array.of(0, 2, 1, 3), 4, 1)], [0, 1, 2, 3])
    })

    for (const name of FIXTURE_NAMES) {
      for (const dtype of ['f32', 'f16'] as const) {
        it(`${name} (${dtype}): spans composed over the GGUF give the golden tokens, and llama.cpp's logits on the same file pick them`, async () => {
          await initBackend('wasm')
          const path = join(tmp, `${name}-${dtype}-span.gguf`)
          await writeGguf(fixtureDir(name), path, { dtype })
          const ckpt = await GgufCheckpoint.open(path)
          const g = golden(name)
          const T = g.prompt_ids.length
          const spans = [await Span.load(ckpt, 0, 1), await Span.load(ckpt, 1, ckpt.config.numLayers)]
          const head = await ModelHead.load(ckpt)
          try {
            const hs = g.hidden_at_block_boundaries.h
            const out = await spans[0].forward(Float32Array.from(hs[0].flat()), T, spans[0].newCache(T))
            assert.ok(maxAbsDiff(out, hs[1].flat()) < (dtype === 'f32' ? 1e-3 : 2e-2))
            const caches = spans.map(s => s.newCache(64))
            const pipeline: SessionPipeline = {
              forward: async (h, t) => await spans[1].forward(await spans[0].forward(h, t, caches[0]), t, caches[1]),
              close: async () => {}
            }
            const r = await generate(head, pipeline, g.prompt_ids, { maxTokens: g.greedy_new_ids.length })
            assert.deepEqual(r.tokenIds, g.greedy_new_ids)
          } finally {
            for (const s of spans) s.dispose()
            head.dispose()
            await ckpt.close()
          }
          // llama.cpp, teacher-forced on the golden continuation, picks each golden token or has it
          // within 0.01 of its best logit. Its CPU f16 matmul rounds activations to f16, so a greedy
          // run of its own flips such near-ties, and which ones depends on the CPU's SIMD path
          // (measured: tiny-llama3 f16 agreed to the end on an AVX2 machine and went another way
          // after token 13, 0.002 behind, on an AVX-512 one).
          const ids = [...g.prompt_ids, ...g.greedy_new_ids]
          const { logits, vocab } = await llamaCppLogits(path, ids, { threads: 2 })
          g.greedy_new_ids.forEach((want, i) => {
            const row = logits.subarray((T - 1 + i) * vocab, (T + i) * vocab)
            const best = row.reduce((m, v) => Math.max(m, v), -Infinity)
            assert.ok(best - row[want] < 0.01, `token ${i}: llama.cpp puts the golden ${want} ${best - row[want]} below its best`)
          })
        })
      }
    }
  })

  describe('errors name the file and the tensor', () => {
    let good: Buffer
    before(async () => {
      const path = join(tmp, 'good.gguf')
      await writeGguf(fixtureDir('tiny-llama'), path, { dtype: 'f16' })
      good = await readFile(path)
    })
    const variant = async (name: string, edit: (b: Buffer) => Buffer): Promise<string> => {
      const p = join(tmp, name)
      await writeFile(p, edit(Buffer.from(good)))
      return p
    }
    const rejects = async (p: Promise<unknown>, re: RegExp): Promise<void> => {
      await assert.rejects(p, (err: Error) => {
        assert.equal(err.name, 'GgufError')
        assert.match(err.message, re)
        return true
      })
    }

    it('bad magic and unsupported versions', async () => {
      const magic = await variant('magic.gguf', b => { b.write('GGUX', 0); return b })
      await rejects(GgufCheckpoint.open(magic), /^magic\.gguf: not a GGUF file \(bad magic 0x58554747, expected "GGUF"\)$/)
      const v = await variant('v1.gguf', b => { b.writeUInt32LE(1, 4); return b })
      await rejects(GgufFile.open(v), /^v1\.gguf: unsupported GGUF version 1 \(supported: 2, 3\)$/)
      const be = await variant('be.gguf', b => { b.writeUInt32BE(3, 4); return b })
      await rejects(GgufFile.open(be), /version 50331648 \(a big-endian file\?\)/)
    })

    it('a file truncated inside the header or inside the tensor data', async () => {
      const empty = await variant('empty.gguf', b => b.subarray(0, 0))
      await rejects(GgufFile.open(empty), /^empty\.gguf: truncated: 0 bytes, too short for a GGUF header$/)
      const head = await variant('head.gguf', b => b.subarray(0, 300))
      await rejects(GgufFile.open(head), /^head\.gguf: truncated or corrupt: 24 metadata keys and 30 tensors cannot fit in 300 bytes$/)
      const vocab = await variant('vocab.gguf', b => b.subarray(0, 3000))
      await rejects(GgufFile.open(vocab), /^vocab\.gguf: truncated: the file \(3000 bytes\) ends inside metadata key tokenizer\.ggml\.tokens$/)
      const infos = await variant('infos.gguf', b => b.subarray(0, b.indexOf('blk.2.attn_q.weight') + 4))
      await rejects(GgufFile.open(infos), /^infos\.gguf: truncated: the file \(\d+ bytes\) ends inside tensor info #\d+$/)
      const p = await variant('data.gguf', b => b)
      await truncate(p, (await stat(p)).size - 100)
      // The last tensor written is the untied LM head.
      await rejects(GgufCheckpoint.open(p), /^data\.gguf: tensor output\.weight: data \[\d+, \d+\) lies beyond the end of the file \(\d+ bytes; truncated\?\)$/)
    })

    it('unknown and unsupported tensor types', async () => {
      const unknown = await variant('unknown.gguf', b => { b.writeUInt32LE(77, tensorTypeOffset(b, 'blk.1.ffn_up.weight')); return b })
      await rejects(GgufCheckpoint.open(unknown), /^unknown\.gguf: tensor blk\.1\.ffn_up\.weight: unknown tensor type 77$/)
      // Q2_K is a real ggml type that Plexus does not decode: the file opens, the read names it.
      const q2 = await variant('q2k.gguf', b => { b.writeUInt32LE(ggmlTypeByName('Q2_K').id, tensorTypeOffset(b, 'blk.1.ffn_up.weight')); return b })
      const q2Path = join(tmp, 'q2k-fixed.gguf')
      // Row length 64 is not a multiple of Q2_K's 256: that alone is reported at open.
      await rejects(GgufFile.open(q2), /^q2k\.gguf: tensor blk\.1\.ffn_up\.weight: row length 64 is not a multiple of the Q2_K block size 256$/)
      const V = GGUF_VALUE
      await writeFile(q2Path, buildGguf([['general.architecture', { type: V.STRING, value: 'llama' }]],
        [{ name: 'blk.0.ffn_up.weight', dims: [256, 1], type: ggmlTypeByName('Q2_K').id, data: new Uint8Array(84) }]))
      const f = await GgufFile.open(q2Path)
      try {
        await rejects(f.readFloat32('blk.0.ffn_up.weight'), /^q2k-fixed\.gguf: tensor blk\.0\.ffn_up\.weight: type Q2_K is not supported \(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K\)$/)
        await rejects(f.readFloat32('nope'), /^q2k-fixed\.gguf: tensor nope is missing from the file$/)
      } finally { await f.close() }
    })

    it('a span whose tensors are missing', async () => {
      // Same-length rename: the file stays valid, block 1 loses its up projection.
      const p = await variant('missing.gguf', b => {
        const at = b.indexOf('blk.1.ffn_up.weight')
        b.write('blk.1.ffn_up.xeight', at)
        return b
      })
      const ckpt = await GgufCheckpoint.open(p)
      try {
        await initBackend('wasm')
        await Span.load(ckpt, 0, 1).then(s => s.dispose())
        await rejects(Span.load(ckpt, 1, 2), /^missing\.gguf: tensor model\.layers\.1\.mlp\.up_proj\.weight \(blk\.1\.ffn_up\.weight\) is missing from the file$/)
        await rejects(ckpt.readBlockRaw(3), /^missing\.gguf: block 3 is outside the model \(0\.\.2\)$/)
      } finally { await ckpt.close() }
    })

    it('unsupported architectures and shapes that disagree with the metadata', async () => {
      const arch = await variant('arch.gguf', b => { b.write('gemma', b.indexOf('llama')); return b })
      await rejects(GgufCheckpoint.open(arch), /^arch\.gguf: metadata general\.architecture "gemma" is not supported \(supported: llama, mistral, qwen2\)$/)
      const ffn = await variant('ffn.gguf', b => {
        const key = Buffer.from('llama.feed_forward_length')
        b.writeUInt32LE(96, b.indexOf(key) + key.length + 4)
        return b
      })
      const ckpt = await GgufCheckpoint.open(ffn)
      try {
        await rejects(ckpt.readBlockRaw(0), /^ffn\.gguf: tensor blk\.0\.ffn_gate\.weight: shape \[192,64\] does not match the config \(expected \[96,64\] for model\.layers\.0\.mlp\.gate_proj\.weight\)$/)
      } finally { await ckpt.close() }
    })
  })
})

