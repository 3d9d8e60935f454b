import assert from 'node:assert/strict'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Checkpoint, LocalModel, generate, openModel } from '@plexus/runtime'
import { blockTensorShapes, headTensorShapes } from '@plexus/runtime'
import { SafetensorsFile, toFloat32 } from '@plexus/runtime'
import { writeSafetensors } from '@plexus/runtime'
import { f32ToBf16, f32ToBf16Bits, f32ToF16Bits } from '@plexus/runtime'
import { makeModel, randomTensor, NormalPool, SHAPES } from '../scripts/lib/model-maker.ts'
import { writeGguf } from '../scripts/lib/gguf.ts'
import { runLlamaCpp } from '../scripts/lib/llama-baseline.ts'

const FIXTURES = new URL('./fixtures/models/', import.meta.url).pathname
const MAKE_MODEL = new URL('../scripts/make-model.ts', import.meta.url).pathname
const f16round = (Math as unknown as { f16round: (x: number) => number }).f16round

let tmp: string

async function filesOf (dir: string): Promise<Map<string, Buffer>> {
  const m = new Map<string, Buffer>()
  for (const f of (await readdir(dir)).sort()) m.set(f, await readFile(join(dir, f)))
  return m
}

function bits16 (h: number): Uint8Array { return new Uint8Array(new Uint16Array([h]).buffer) }

describe('model making tools', () => {
  before(async () => { tmp = await mkdtemp(join(tmpdir(), 'plexus-model-maker-')) })
  after(async () => { await rm(tmp, { recursive: true, force: true }) })

  describe('safetensors writer: 16-bit conversion', () => {
    it('rounds known float16 values to nearest even, with subnormals, inf and nan', () => {
      const cases: [number, number][] = [
        [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff],
        [65519.99, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [Infinity, 0x7c00], [-Infinity, 0xfc00],
        [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], // ties go to the even mantissa
        [2 ** -14, 0x0400], [2 ** -24, 0x0001], [1023 * 2 ** -24, 0x03ff], // smallest normal, subnormals
        [2 ** -25, 0x0000], [1.5 * 2 ** -25, 0x0001], [3 * 2 ** -25, 0x0002], [-(2 ** -26), 0x8000]
      ]
      for (const [x, h] of cases) assert.equal(f32ToF16Bits(x), h, `f16(${x})`)
      const nan = f32ToF16Bits(NaN)
      assert.equal(nan & 0x7c00, 0x7c00)
      assert.notEqual(nan & 0x3ff, 0)
    })

    it('rounds known bfloat16 values to nearest even, with subnormals, inf and nan', () => {
      const cases: [number, number][] = [
        [0, 0x0000], [-0, 0x8000], [1, 0x3f80], [-1, 0xbf80], [Infinity, 0x7f80], [-Infinity, 0xff80],
        [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [1 + 2 ** -8 + 2 ** -20, 0x3f81],
        [3.4028234663852886e38, 0x7f80], // f32 max rounds past the largest bf16
        [2 ** -133, 0x0001], [2 ** -134, 0x0000], [3 * 2 ** -134, 0x0002] // subnormal ties
      ]
      for (const [x, h] of cases) assert.equal(f32ToBf16Bits(x), h, `bf16(${x})`)
      const nan = f32ToBf16Bits(NaN)
      assert.equal(nan & 0x7f80, 0x7f80)
      assert.notEqual(nan & 0x7f, 0)
      // A NaN whose payload sits only in the low bits must not become infinity.
      const lowNan = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0]
      assert.notEqual(f32ToBf16Bits(lowNan), 0x7f80)
    })

    it('round-trips every 16-bit pattern and matches Math.f16round on random floats', () => {
      for (let h = 0; h < 65536; h++) {
        const isNan = (x: number, expMask: number, manMask: number): boolean => (x & expMask) === expMask && (x & manMask) !== 0
        const f = toFloat32(bits16(h), 'F16')[0]
        if (!isNan(h, 0x7c00, 0x3ff)) assert.equal(f32ToF16Bits(f), h, `f16 pattern ${h.toString(16)}`)
        const b = toFloat32(bits16(h), 'BF16')[0]
        if (!isNan(h, 0x7f80, 0x7f)) assert.equal(f32ToBf16Bits(b), h, `bf16 pattern ${h.toString(16)}`)
      }
      const u = new Uint32Array(20000)
      for (let i = 0; i < u.length; i++) u[i] = (Math.random() * 2 ** 32) >>> 0
      for (const x of new Float32Array(u.buffer)) {
        if (Number.isNaN(x)) continue
        assert.equal(toFloat32(bits16(f32ToF16Bits(x)), 'F16')[0], f16round(x), `f16(${x})`)
      }
    })

    it('writes files that the reader accepts, with an 8-byte aligned space-padded header', async () => {
      const path = join(tmp, 'rt.safetensors')
      const a = new Float32Array([1, -2.5, 1 + 3 * 2 ** -8, 65504, 2 ** -24, -0])
      await writeSafetensors(path, [
        { name: 'a.bf16', dtype: 'BF16', shape: [2, 3], data: a },
        { name: 'a.f16', dtype: 'F16', shape: [6], data: async () => a },
        { name: 'a.f32', dtype: 'F32', shape: [3, 2], data: () => a }
      ], { format: 'pt' })
      const raw = await readFile(path)
      const headerLen = Number(raw.readBigUInt64LE(0))
      assert.equal(headerLen % 8, 0)
      assert.match(raw.subarray(8, 8 + headerLen).toString('utf8'), /^\{.*\} *$/)
      const f = await SafetensorsFile.open(path)
      try {
        assert.deepEqual(f.metadata, { format: 'pt' })
        const read = async (n: string): Promise<number[]> => {
          const e = f.tensors.get(n)
          assert.ok(e != null)
          return Array.from(toFloat32(await f.readBytes(e), e.dtype))
        }
        assert.deepEqual(await read('a.f32'), Array.from(a))
        assert.deepEqual(await read('a.f16'), Array.from(a, x => f16round(x)))
        assert.deepEqual(await read('a.bf16'), [1, -2.5, 1 + 2 * 2 ** -7, 65536, 2 ** -24, -0])
      } finally {
        await f.close()
      }
      await assert.rejects(writeSafetensors(path, [{ name: 'x', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), /tensor x: 2 values given for shape \[3\]/)
    })
  })

  describe('model maker', () => {
    it('is deterministic per seed: same seed byte-identical, another seed different', async () => {
      const [a, b, c] = ['a', 'b', 'c'].map(x => join(tmp, 'det-' + x))
      await makeModel({ shape: 'tiny', out: a, seed: 7 })
      await makeModel({ shape: 'tiny', out: b, seed: 7 })
      await makeModel({ shape: 'tiny', out: c, seed: 8 })
      const [fa, fb, fc] = await Promise.all([filesOf(a), filesOf(b), filesOf(c)])
      assert.deepEqual([...fa.keys()], ['config.json', 'generation_config.json', 'model.safetensors', 'plexus-manifest.json', 'tokenizer.json', 'tokenizer_config.json'])
      for (const [name, bytes] of fa) assert.ok(bytes.equals(fb.get(name) as Buffer), `${name} differs between runs with the same seed`)
      assert.ok(!(fa.get('model.safetensors') as Buffer).equals(fc.get('model.safetensors') as Buffer))
    })

    it('writes a model that Checkpoint opens with the config\'s shapes and the intended scales', async () => {
      const dir = join(tmp, 'open')
      await makeModel({ shape: 'tiny', out: dir, seed: 1, layers: 2 })
      const ck = await Checkpoint.open(dir)
      try {
        const cfg = ck.config
        const s = SHAPES.tiny
        assert.equal(cfg.architecture, 'LlamaForCausalLM')
        assert.deepEqual([cfg.hiddenSize, cfg.numLayers, cfg.numHeads, cfg.numKvHeads, cfg.intermediateSize, cfg.vocabSize], [s.hiddenSize, 2, s.numHeads, s.numKvHeads, s.intermediateSize, s.vocabSize])
        assert.deepEqual([cfg.bosTokenId, cfg.eosTokenIds, cfg.ropeTheta, cfg.rmsNormEps, cfg.maxPositions], [1, [2], 10000, 1e-5, 2048])
        for (let b = 0; b < cfg.numLayers; b++) {
          const block = await ck.readBlockRaw(b)
          assert.deepEqual(block.map(t => [t.name, t.shape]), [...blockTensorShapes(cfg, b)])
        }
        assert.deepEqual((await ck.readHeadRaw()).map(t => t.name), [...headTensorShapes(cfg).keys()])
        const std = (x: Float32Array, mean = 0): number => Math.sqrt(x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length)
        const down = await ck.readFloat32('model.layers.1.mlp.down_proj.weight')
        assert.ok(Math.abs(std(down) - 2 / Math.sqrt(s.intermediateSize)) < 0.01)
        assert.ok(Math.abs(std(await ck.readFloat32('model.embed_tokens.weight')) - 1) < 0.02)
        const norm = await ck.readFloat32('model.norm.weight')
        assert.ok(norm.every(v => Math.abs(v - 1) < 0.3) && std(norm, 1) > 0)
      } finally {
        await ck.close()
      }
    })

    it('shards with a valid index; a shard holds only its tensors; values do not depend on sharding', async () => {
      const dir = join(tmp, 'sharded')
      const single = join(tmp, 'single')
      await makeModel({ shape: 'tiny', out: dir, seed: 3, shards: 3, dtype: 'bf16', arch: 'qwen2', tie: true })
      await makeModel({ shape: 'tiny', out: single, seed: 3, arch: 'qwen2', tie: true })
      const index = JSON.parse(await readFile(join(dir, 'model.safetensors.index.json'), 'utf8'))
      const shardFiles = (await readdir(dir)).filter(f => f.endsWith('.safetensors')).sort()
      assert.deepEqual(shardFiles, [1, 2, 3].map(i => `model-0000${i}-of-00003.safetensors`))
      const ck = await Checkpoint.open(dir)
      const ref = await Checkpoint.open(single)
      try {
        const cfg = ck.config
        assert.equal(cfg.architecture, 'Qwen2ForCausalLM')
        assert.ok(cfg.qkvBias && cfg.tieWordEmbeddings)
        const expected = new Map<string, number[]>(headTensorShapes(cfg))
        for (let b = 0; b < cfg.numLayers; b++) for (const [n, s] of blockTensorShapes(cfg, b)) expected.set(n, s)
        assert.deepEqual(Object.keys(index.weight_map).sort(), [...expected.keys()].sort())
        assert.equal(index.metadata.total_size, [...expected.values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 1) * 2, 0))
        for (const file of shardFiles) {
          const f = await SafetensorsFile.open(join(dir, file))
          const mine = Object.entries(index.weight_map).filter(([, v]) => v === file).map(([k]) => k).sort()
          assert.ok(mine.length > 0, `${file} is empty`)
          assert.deepEqual([...f.tensors.keys()].sort(), mine)
          await f.close()
        }
        for (const name of ['model.embed_tokens.weight', 'model.layers.2.self_attn.k_proj.bias', 'model.layers.1.mlp.up_proj.weight']) {
          const bf = await ck.readFloat32(name, expected.get(name))
          const f32 = await ref.readFloat32(name, expected.get(name))
          assert.deepEqual(bf, toFloat32(new Uint8Array(f32ToBf16(f32).buffer), 'BF16'), name)
        }
      } finally {
        await ck.close()
        await ref.close()
      }
    })

    it('draws the same values whether or not worker threads generate them', async () => {
      const pool = new NormalPool(2)
      try {
        const shape = [4100, 1024] // over the worker threshold, not a whole number of chunks
        const inWorkers = await randomTensor('model.layers.0.mlp.up_proj.weight', shape, 5, pool)
        const inline = await randomTensor('model.layers.0.mlp.up_proj.weight', shape, 5)
        assert.ok(Buffer.from(inWorkers.buffer).equals(Buffer.from(inline.buffer)))
      } finally {
        await pool.close()
      }
    })

    it('refuses bad options with a clear message', async () => {
      await assert.rejects(makeModel({ shape: 'tiny', out: join(tmp, 'bad'), shards: 0 }), /shards must be an integer in 1\.\./)
      await assert.rejects(makeModel({ shape: 'huge' as 'tiny', out: join(tmp, 'bad') }), /unknown shape "huge"/)
      await assert.rejects(makeModel({ shape: 'tiny', out: join(tmp, 'bad'), seed: -1 }), /seed must be an integer/)
    })
  })

  describe('GGUF + llama.cpp baseline', () => {
    for (const fixture of ['tiny-llama', 'tiny-llama3-sharded-bf16', 'tiny-qwen2-tied-bf16']) {
      it(`reproduces ${fixture}'s golden greedy tokens`, async () => {
        const dir = join(FIXTURES, fixture)
        const golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8'))
        const gguf = join(tmp, `${fixture}.gguf`)
        await writeGguf(dir, gguf)
        const raw = await readFile(gguf)
        assert.equal(raw.toString('latin1', 0, 4), 'GGUF')
        assert.equal(raw.readUInt32LE(4), 3)
        const run = await runLlamaCpp(gguf, golden.prompt_ids, golden.greedy_new_ids.length, { threads: 2 })
        assert.deepEqual(run.tokenIds, golden.greedy_new_ids)
        assert.ok(run.prefillTokensPerSecond > 0 && run.decodeTokensPerSecond > 0)
      })
    }

    it('make-model --gguf-dtype q4_k writes Q4_K blocks that Plexus and llama.cpp read to the same tokens', async () => {
      const dir = join(tmp, 'gguf-q4k')
      const run = async (...args: string[]): Promise<{ code: number, stderr: string }> => {
        try {
          await promisify(execFile)(process.execPath, [MAKE_MODEL, ...args])
          return { code: 0, stderr: '' }
        } catch (err: any) { return { code: err.code, stderr: err.stderr } }
      }
      // small's rows (768, 2048) are whole 256-value super-blocks
      const made = await run('--shape', 'small', '--layers', '1', '--vocab', '512', '--seed', '3', '--out', dir, '--gguf', '--gguf-dtype', 'q4_k')
      assert.equal(made.code, 0, made.stderr)
      const src = await openModel(join(dir, 'model.gguf'))
      try {
        for (const name of ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.mlp.down_proj.weight', 'model.embed_tokens.weight']) {
          assert.equal((await src.readRaw(name)).dtype, 'Q4_K', name)
        }
      } finally { await src.close() }
      const prompt = [1, 300, 301, 302, 303]
      const m = await LocalModel.load(join(dir, 'model.gguf'), { placement: 'in-process' })
      let ours: number[]
      try { ours = (await generate(m.head, await m.session(64), prompt, { maxTokens: 8 })).tokenIds } finally { await m.dispose() }
      assert.deepEqual(ours, (await runLlamaCpp(join(dir, 'model.gguf'), prompt, 8, { threads: 2 })).tokenIds)
      const bad = await run('--shape', 'tiny', '--out', join(tmp, 'bad'), '--gguf', '--gguf-dtype', 'q5_k')
      assert.equal(bad.code, 2)
      assert.match(bad.stderr, /--gguf-dtype must be f32, f16, q8_0 or q4_k \(got "q5_k"\)/)
    })

    it('loads a made model with its BPE tokenizer in llama.cpp, and greedy decoding keeps moving', async () => {
      const dir = join(tmp, 'gguf-made')
      await makeModel({ shape: 'tiny', out: dir, seed: 11, gguf: true })
      const run = await runLlamaCpp(join(dir, 'model.gguf'), [1, 300, 301, 302, 303, 304, 305, 306], 32, { threads: 2 })
      assert.equal(run.tokenIds.length, 32)
      assert.ok(new Set(run.tokenIds).size >= 8, `greedy output collapsed: ${run.tokenIds.join(',')}`)
      await assert.rejects(runLlamaCpp(join(dir, 'missing.gguf'), [1], 1), /missing\.gguf: no such file/)
    })
  })
})
