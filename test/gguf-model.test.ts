// A .gguf file works wherever a model directory does: plexus-client generate --local, a swarm of
// plexus-node processes, tokenizer and chat template from its metadata, a model id over its
// tensors as stored, and errors that name the file.
import assert from 'node:assert/strict'
import { chmod, copyFile, mkdir, mkdtemp, readdir, rm, stat, truncate, utimes } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  Checkpoint, GgufCheckpoint, openModel, loadManifest, writeSafetensors, applyChatTemplate, blockTensorShapes, headTensorShapes, quantizeQ8_0,
  dequantize, ggmlTypeByName, unpermuteRotary, sentencePieceMerges
} from '@plexus/runtime'
import { writeGguf } from '../scripts/lib/gguf.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import { fixtureDir, golden, runCli, CLIENT_BIN } from './support/fixtures.ts'
import { requireLlamaCpp } from './support/gguf.ts'

const NODE_BIN = 'packages/server/bin/plexus-node.js'

async function generateVia (bootstrap: string | undefined, model: string, prompt: number[], maxTokens: number): Promise<any> {
  const where = bootstrap != null ? ['--bootstrap', bootstrap] : ['--local', '--backend', 'wasm']
  const r = await runCli(CLIENT_BIN, ['generate', ...where, '--model', model, '--token-ids', prompt.join(','), '--max-tokens', String(maxTokens), '--ignore-eos', '--json'])
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout)
}

describe('GGUF models end to end', function () {
  this.timeout(240_000)
  let tmp: string
  const g = golden('tiny-llama')
  const gguf: Record<'f32' | 'f16' | 'q8_0', string> = { f32: '', f16: '', q8_0: '' }
  /** Q8_0's expected tokens: the same model with the Q8_0 weights dequantized into a safetensors directory. */
  let q8Reference: string

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'plexus-gguf-model-'))
    for (const d of ['f32', 'f16', 'q8_0'] as const) {
      gguf[d] = join(tmp, `tiny-llama-${d}.gguf`)
      await writeGguf(fixtureDir('tiny-llama'), gguf[d], { dtype: d })
    }
    q8Reference = join(tmp, 'tiny-llama-q8_0-dequantized')
    await mkdir(q8Reference)
    for (const f of ['config.json', 'generation_config.json']) await copyFile(join(fixtureDir('tiny-llama'), f), join(q8Reference, f))
    const src = await GgufCheckpoint.open(gguf.q8_0)
    try {
      const shapes = [...headTensorShapes(src.config)]
      for (let b = 0; b < src.config.numLayers; b++) shapes.push(...blockTensorShapes(src.config, b))
      await writeSafetensors(join(q8Reference, 'model.safetensors'), shapes.map(([name, shape]) => ({ name, dtype: 'F32', shape, data: async () => await src.readFloat32(name, shape) })))
    } finally { await src.close() }
  })
  after(async () => { await rm(tmp, { recursive: true, force: true }) })

  describe('tensors as stored', () => {
    it('Q8_0 tensors come as Q8_0 blocks in Hugging Face row order (q/k rows un-permuted as whole blocks)', async () => {
      const q8 = await GgufCheckpoint.open(gguf.q8_0)
      const ref = await Checkpoint.open(fixtureDir('tiny-llama'))
      try {
        for (const name of ['model.layers.1.self_attn.q_proj.weight', 'model.layers.1.self_attn.k_proj.weight', 'model.layers.1.mlp.down_proj.weight']) {
          const raw = await q8.readRaw(name)
          assert.equal(raw.dtype, 'Q8_0', name)
          // q8_0 blocks are per 32 values of a row: quantizing HF rows gives the same blocks
          assert.deepEqual(Buffer.from(raw.bytes), Buffer.from(quantizeQ8_0(await ref.readFloat32(name))), name)
        }
        // norms stay f32, as the writer stores them
        assert.equal((await q8.readRaw('model.layers.0.input_layernorm.weight')).dtype, 'F32')
      } finally { await q8.close(); await ref.close() }
    })

    it('types a RawTensor cannot hold (Q5_0 here) are widened to F32 at read, rows un-permuted', async () => {
      const f = await GgufCheckpoint.open(gguf.f32)
      try {
        const name = 'model.layers.0.self_attn.k_proj.weight'
        const info = f.info(name)
        // the tensor's first bytes, read as Q5_0 blocks
        const end = info.begin + info.elements / 32 * 22
        f.file.tensors.set(info.name, { ...info, type: ggmlTypeByName('Q5_0'), end })
        const raw = await f.readRaw(name)
        assert.equal(raw.dtype, 'F32')
        const stored = dequantize('Q5_0', await f.file.readBytes(info.name), info.elements)
        assert.deepEqual(new Float32Array(raw.bytes.buffer, raw.bytes.byteOffset, info.elements), unpermuteRotary(stored, info.shape[0], f.config.numKvHeads))
      } finally { await f.close() }
    })
  })

  describe('plexus-client generate --local --model x.gguf', () => {
    for (const d of ['f32', 'f16'] as const) {
      it(`${d} GGUF of tiny-llama gives the golden tokens`, async () => {
        const out = await generateVia(undefined, gguf[d], g.prompt_ids, g.greedy_new_ids.length)
        assert.deepEqual(out.token_ids, g.greedy_new_ids)
      })
    }

    it('Q8_0 GGUF gives the tokens of its dequantized weights in float32 (and llama.cpp\'s, as far as its int8 activations allow)', async function () {
      const out = await generateVia(undefined, gguf.q8_0, g.prompt_ids, g.greedy_new_ids.length)
      const ref = await generateVia(undefined, q8Reference, g.prompt_ids, g.greedy_new_ids.length)
      // the CPU kernels round activations to 16 bits in their dot products: the weights' rounding
      // is all that moves the path (llama.cpp rounds activations to 8 bits as well)
      assert.deepEqual(out.token_ids, ref.token_ids)
      assert.notDeepEqual(out.token_ids, g.greedy_new_ids, 'q8_0 rounding changes this model\'s greedy path')
      await requireLlamaCpp(this)
      const { runLlamaCpp } = await import('../scripts/lib/llama-baseline.ts')
      const ll = await runLlamaCpp(gguf.q8_0, g.prompt_ids, g.greedy_new_ids.length, { threads: 2 })
      // measured: llama.cpp's int8 activations part from the float32 path at token 31 of 32
      assert.deepEqual(out.token_ids.slice(0, 24), ll.tokenIds.slice(0, 24))
    })

    it('a truncated GGUF is refused with an error naming the file', async () => {
      const cut = join(tmp, 'cut.gguf')
      await copyFile(gguf.f16, cut)
      await truncate(cut, (await stat(cut)).size - 1000)
      const r = await runCli(CLIENT_BIN, ['generate', '--local', '--backend', 'wasm', '--model', cut, '--token-ids', '1,2', '--max-tokens', '1'])
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, /^plexus-client: cut\.gguf: tensor output\.weight: data \[\d+, \d+\) lies beyond the end of the file \(\d+ bytes; truncated\?\)\n$/)
      const n = await runCli(NODE_BIN, ['join', '--backend', 'wasm', '--bootstrap', '/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN', '--model', cut])
      assert.equal(n.code, 2, n.stderr)
      assert.match(n.stderr, /^plexus-node: cut\.gguf: tensor output\.weight: data .* truncated\?\)\n$/)
    })
  })

  describe('model ids', () => {
    it('are digests over the tensors as stored, kept beside the file or, when its directory is read-only, in the manifest cache', async () => {
      const ro = join(tmp, 'ro')
      await mkdir(ro)
      const file = join(ro, 'model.gguf')
      await copyFile(gguf.q8_0, file)
      const cache = join(tmp, 'manifests')
      const saved = process.env.PLEXUS_MANIFEST_DIR
      process.env.PLEXUS_MANIFEST_DIR = cache
      // root writes into read-only directories: block the place beside the file with a directory then
      if (process.getuid?.() === 0) await mkdir(`${file}.plexus-manifest.json`)
      await chmod(ro, 0o555)
      try {
        const a = await openModel(file)
        const m = await loadManifest(a)
        await a.close()
        assert.equal(m.name, 'model')
        assert.deepEqual((await readdir(ro)).filter(f => f.endsWith('.tmp')), [])
        assert.equal((await readdir(cache)).length, 1)
        const b = await openModel(file)
        try {
          assert.deepEqual(await loadManifest(b), m)
          // the f16 and q8_0 files of one model are different weights: different ids
          const f16 = await openModel(gguf.f16)
          try { assert.notEqual((await loadManifest(f16, { write: false })).id, m.id) } finally { await f16.close() }
        } finally { await b.close() }
      } finally {
        await chmod(ro, 0o755)
        if (saved == null) delete process.env.PLEXUS_MANIFEST_DIR
        else process.env.PLEXUS_MANIFEST_DIR = saved
      }
    })

    it('a file changed in place gets a fresh manifest', async () => {
      const file = join(tmp, 'changing.gguf')
      await copyFile(gguf.f16, file)
      const a = await openModel(file)
      const before = await loadManifest(a)
      await a.close()
      assert.ok((await stat(`${file}.plexus-manifest.json`)).isFile())
      await copyFile(gguf.q8_0, file)
      await utimes(file, new Date(), new Date(Date.now() + 5000))
      const b = await openModel(file)
      try {
        const after = await loadManifest(b)
        assert.notEqual(after.id, before.id)
        const q8 = await openModel(gguf.q8_0)
        try { assert.equal(after.id, (await loadManifest(q8, { write: false })).id) } finally { await q8.close() }
      } finally { await b.close() }
    })
  })

  describe('a swarm of plexus-node join --model x.gguf processes', () => {
    for (const d of ['f16', 'q8_0'] as const) {
      it(`${d}: three nodes give the tokens of generate --local on the same file, under the file's model id`, async () => {
        const local = await generateVia(undefined, gguf[d], g.prompt_ids, 24)
        const swarm = await startSwarm(gguf[d], ['0:1', '1:2', '2:3'])
        try {
          const ids = new Set(swarm.nodes.map(n => n.ready.modelId))
          assert.equal(ids.size, 1)
          assert.equal(swarm.nodes[0].ready.modelName, `tiny-llama-${d}`)
          const out = await generateVia(swarm.bootstrapAddr, gguf[d], g.prompt_ids, 24)
          assert.deepEqual(out.token_ids, local.token_ids)
          assert.equal(out.model_id, swarm.nodes[0].ready.modelId)
          assert.deepEqual(out.route.map((h: any) => `${h.start}:${h.end}`), ['0:1', '1:2', '2:3'])
          // GGUF servers offer no client parts: a client naming the model must bring the file
          const byName = await runCli(CLIENT_BIN, ['generate', '--bootstrap', swarm.bootstrapAddr, '--model', `tiny-llama-${d}`, '--token-ids', '1,2', '--max-tokens', '1', '--cache-dir', join(tmp, 'cache')])
          assert.equal(byName.code, 2, byName.stderr)
          assert.match(byName.stderr, /none offers the head \(servers of a GGUF file never do\); pass --model DIR or --model FILE\.gguf/)
        } finally { await swarm.stop() }
      })
    }
  })

  describe('tokenizer and chat template from GGUF metadata', () => {
    let dir: string
    let file: string
    before(async () => {
      dir = join(tmp, 'tiny-tok')
      await makeModel({ shape: 'tiny', dtype: 'f32', out: dir, seed: 5 })
      file = join(tmp, 'tiny-tok.gguf')
      await writeGguf(dir, file, { dtype: 'f16' })
    })

    it('gives the same token ids as the model directory\'s tokenizer.json, and the same chat prompt', async () => {
      const st = await openModel(dir)
      const gg = await openModel(file)
      try {
        const a = await st.tokenizer()
        const b = await gg.tokenizer()
        assert.ok(a != null && b != null)
        const texts = ['The old lighthouse stood at the end of a narrow road.', ' spaces  and\ttabs\nnewlines', 'Ünïcödé ✓ 漢字 😀', 'x<|im_start|>user\nhi<|im_end|>', '', "It's 1234 o'clock!"]
        for (const t of texts) {
          assert.deepEqual(b.encode(t), a.encode(t), t)
          assert.deepEqual(b.encode(t, { addSpecialTokens: false }), a.encode(t, { addSpecialTokens: false }), t)
          assert.equal(b.decode(a.encode(t), { skipSpecialTokens: true }), a.decode(a.encode(t), { skipSpecialTokens: true }))
        }
        assert.equal(b.bosTokenId, a.bosTokenId)
        assert.deepEqual(b.eosTokenIds, a.eosTokenIds)
        const msgs = [{ role: 'user', content: 'What is a swarm?' }]
        const ca = await st.tokenizerConfig()
        const cb = await gg.tokenizerConfig()
        assert.ok(ca != null && cb != null)
        assert.equal(applyChatTemplate(cb, msgs, { addGenerationPrompt: true }), applyChatTemplate(ca, msgs, { addGenerationPrompt: true }))
      } finally { await st.close(); await gg.close() }
    })

    it('a SentencePiece (llama) vocabulary tokenizes text as llama.cpp does on the same file', async function () {
      await requireLlamaCpp(this)
      const { llamaCppTokenize } = await import('../scripts/lib/llama-baseline.ts')
      const texts = ['Hello world', ' two  spaces', 'Ünï 漢 😀', 'a\nb', '']
      const f = await GgufCheckpoint.open(gguf.f16)
      try {
        const tok = await f.tokenizer()
        assert.deepEqual(texts.map(t => tok!.encode(t, { addSpecialTokens: false })), await llamaCppTokenize(gguf.f16, texts))
      } finally { await f.close() }
    })

    it('SentencePiece merges follow transformers\' extractor: higher-scored pieces first, then by the halves\' ids', () => {
      const tokens = ['▁', 'a', 'b', 'ab', '▁a', '▁ab', 'ba']
      assert.deepEqual(sentencePieceMerges(tokens, [0, 0, 0, -1, -2, -3, -0.5]), ['b a', 'a b', '▁ a', '▁ ab', '▁a b'])
    })

    it('generate --local --chat --prompt gives the same prompt ids from the GGUF as from the directory', async () => {
      const run = async (model: string): Promise<any> => {
        const r = await runCli(CLIENT_BIN, ['generate', '--local', '--backend', 'wasm', '--model', model, '--chat', '--prompt', 'Hello there', '--max-tokens', '2', '--json'])
        assert.equal(r.code, 0, r.stderr)
        return JSON.parse(r.stdout)
      }
      const [a, b] = [await run(dir), await run(file)]
      assert.deepEqual(b.prompt_ids, a.prompt_ids)
      assert.ok(a.prompt_ids.length > 5)
    })
  })
})
