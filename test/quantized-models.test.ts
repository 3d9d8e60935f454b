// `--quantize q8_0|q4_k`: a model's blocks quantized at load give exactly what a GGUF file holding
// the same blocks gives, in one process, across span workers and across a swarm of plexus-node
// processes; the quantized model has an id of its own. (Their logits against the same weights
// dequantized to float32: cpu-quantized-block.test.ts.)
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  initBackend, Checkpoint, Span, LocalModel, QuantizedSource, loadManifest, checkManifest, quantizedModelId, generate
} from '@plexus/runtime'
import type { QuantFormat } from '@plexus/runtime'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { writeGguf } from '../scripts/lib/gguf.ts'
import { fixtureDir, runCli, CLIENT_BIN } from './support/fixtures.ts'

const NODE_BIN = 'packages/server/bin/plexus-node.js'
const PROMPT = [1, 17, 250, 3, 99]

async function generateJson (args: string[]): Promise<any> {
  const r = await runCli(CLIENT_BIN, ['generate', ...args, '--token-ids', PROMPT.join(','), '--max-tokens', '12', '--ignore-eos', '--json'])
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout)
}

describe('--quantize', function () {
  this.timeout(300_000)
  let tmp: string
  let q4model: string
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'plexus-quantize-'))
    // rows of 256 and 512: whole q4_K super-blocks (the fixtures' 64-wide rows fall back to q8_0)
    q4model = join(tmp, 'q4')
    await makeModel({ shape: { hiddenSize: 256, numLayers: 3, numHeads: 4, numKvHeads: 2, intermediateSize: 512, vocabSize: 512 }, dtype: 'bf16', out: q4model, seed: 11 })
    await initBackend('wasm')
  })
  after(async () => { await rm(tmp, { recursive: true, force: true }) })

  describe('the quantized source and its manifest', () => {
    it('quantizes the seven linear weights of a block and nothing else', async () => {
      const base = await Checkpoint.open(q4model)
      const src = new QuantizedSource(base, 'q4_k')
      try {
        const dtypes = Object.fromEntries((await src.readBlockRaw(1)).map(t => [t.name.replace('model.layers.1.', ''), t.dtype]))
        assert.deepEqual(dtypes, {
          'input_layernorm.weight': 'BF16',
          'self_attn.q_proj.weight': 'Q4_K', 'self_attn.k_proj.weight': 'Q4_K', 'self_attn.v_proj.weight': 'Q4_K', 'self_attn.o_proj.weight': 'Q4_K',
          'post_attention_layernorm.weight': 'BF16',
          'mlp.gate_proj.weight': 'Q4_K', 'mlp.up_proj.weight': 'Q4_K', 'mlp.down_proj.weight': 'Q4_K'
        })
        assert.deepEqual((await src.readHeadRaw()).map(t => t.dtype), (await base.readHeadRaw()).map(t => t.dtype))
        const q = (await src.readBlockRaw(0)).find(t => t.name.endsWith('mlp.down_proj.weight'))!
        assert.equal(q.bytes.length, 256 * 512 / 256 * 144)
      } finally { await src.close() }
    })

    it('rows that are not whole q4_K super-blocks fall back to q8_0', async () => {
      const src = new QuantizedSource(await Checkpoint.open(fixtureDir('tiny-qwen2-tied-bf16')), 'q4_k')
      try {
        const raws = await src.readBlockRaw(0)
        assert.equal(raws.find(t => t.name.endsWith('q_proj.weight'))!.dtype, 'Q8_0')
        assert.equal(raws.find(t => t.name.endsWith('q_proj.bias'))!.dtype, 'BF16')
      } finally { await src.close() }
    })

    it('has an id derived from the stored model\'s id and the format, and the stored digests', async () => {
      const base = await Checkpoint.open(fixtureDir('tiny-llama'))
      try {
        const stored = await loadManifest(base, { write: false })
        for (const format of ['q8_0', 'q4_k'] as const) {
          const m = await loadManifest(new QuantizedSource(base, format), { write: false })
          assert.equal(m.id, quantizedModelId(stored.id, format))
          assert.notEqual(m.id, stored.id)
          assert.equal(m.name, `${stored.name}:${format}`)
          assert.equal(m.quantize, format)
          assert.deepEqual(m.blockDigests, stored.blockDigests)
          checkManifest(m, base.config)
          assert.throws(() => checkManifest({ ...m, quantize: format === 'q8_0' ? 'q4_k' : 'q8_0' }, base.config), /id does not match its digests/)
          assert.throws(() => checkManifest({ ...m, quantize: 'q3' as any }, base.config), /unknown quantization "q3"/)
        }
        assert.equal(quantizedModelId(stored.id, 'q8_0'), quantizedModelId(stored.id, 'q8_0'))
      } finally { await base.close() }
    })

    it('checks the stored weights against the manifest before quantizing them', async () => {
      const base = await Checkpoint.open(fixtureDir('tiny-llama'))
      const src = new QuantizedSource(base, 'q8_0')
      try {
        const m = await loadManifest(src, { write: false })
        const span = await Span.load(src, 0, 3, { blockDigests: m.blockDigests })
        span.dispose()
        const wrong = [...m.blockDigests]; wrong[1] = m.blockDigests[0]
        await assert.rejects(Span.load(src, 0, 3, { blockDigests: wrong }), /^WeightsMismatchError: block 1's weights do not match the model id/)
      } finally { await src.close() }
    })
  })

  describe('generate --local', () => {
    const cases: Array<[string, () => string, QuantFormat]> = [
      ['tiny-llama (f32)', () => fixtureDir('tiny-llama'), 'q8_0'],
      ['tiny-qwen2-tied-bf16 (q/k/v biases stay)', () => fixtureDir('tiny-qwen2-tied-bf16'), 'q8_0'],
      ['a bf16 model with 256-wide rows', () => q4model, 'q4_k'],
      ['a bf16 model with 256-wide rows', () => q4model, 'q8_0']
    ]
    for (const [name, dir, format] of cases) {
      it(`${name} --quantize ${format}: the tokens of a GGUF file holding the same blocks`, async () => {
        // Not the tokens of the weights dequantized to float32: the CPU kernels round activations
        // per block (q4_k: to 8 bits, as llama.cpp does), which can flip near-tied greedy picks of
        // these random models within a few tokens (logits: cpu-quantized-block.test.ts).
        const gguf = join(tmp, `${format}-${name.replace(/\W+/g, '-')}.gguf`)
        await writeGguf(dir(), gguf, { dtype: format, quantizeHead: false })
        const quantized = await generateJson(['--local', '--model', dir(), '--quantize', format])
        const expected = await generateJson(['--local', '--model', gguf])
        assert.deepEqual(quantized.token_ids, expected.token_ids)
        assert.equal(quantized.token_ids.length, 12)
        // quantizing changes the weights: over 12 greedy tokens of this random model 4 bits show
        if (format === 'q4_k') assert.notDeepEqual(quantized.token_ids, (await generateJson(['--local', '--model', dir()])).token_ids)
      })
    }

    it('span workers give the same tokens as one in-process span', async () => {
      const load = async (opts: Parameters<typeof LocalModel.load>[1]): Promise<number[]> => {
        const m = await LocalModel.load(q4model, opts)
        try { return (await generate(m.head, await m.session(64), PROMPT, { maxTokens: 10 })).tokenIds } finally { await m.dispose() }
      }
      const inProcess = await load({ quantize: 'q4_k', placement: 'in-process' })
      const workers = await load({ quantize: 'q4_k', placement: 'workers', cuts: [1, 2] })
      assert.deepEqual(workers, inProcess)
    })
  })

  describe('a swarm of plexus-node join --quantize q8_0 processes', () => {
    it('gives the tokens of generate --local --quantize q8_0, under the quantized model\'s id and name', async () => {
      const model = fixtureDir('tiny-llama')
      const local = await generateJson(['--local', '--model', model, '--quantize', 'q8_0'])
      const swarm = await startSwarm(model, ['0:1', '1:2', '2:3'], ['--quantize', 'q8_0'])
      try {
        const r = await generateJson(['--bootstrap', swarm.bootstrapAddr, '--model', model, '--quantize', 'q8_0'])
        assert.deepEqual(r.token_ids, local.token_ids)
        assert.deepEqual(r.route.map((h: any) => `${h.start}:${h.end}`), ['0:1', '1:2', '2:3'])
        const ckpt = await Checkpoint.open(model)
        const stored = await loadManifest(ckpt, { write: false }).finally(async () => { await ckpt.close() })
        assert.equal(r.model_id, quantizedModelId(stored.id, 'q8_0'))
        for (const n of swarm.nodes) assert.equal(n.ready.modelId, r.model_id)
        const models = await runCli(CLIENT_BIN, ['models', '--bootstrap', swarm.bootstrapAddr, '--json'])
        assert.equal(models.code, 0, models.stderr)
        const listed = JSON.parse(models.stdout).models.find((m: any) => m.modelId === r.model_id)
        assert.equal(listed?.name, 'tiny-llama:q8_0')
        assert.deepEqual(listed?.formats, ['q8_0'])
      } finally { await swarm.stop() }
    })
  })

  describe('usage', () => {
    const bootstrap = '/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDULdPrj1NzTYTDKPXLsi1WP4D9srbEhDgYYDFeDUhxgg'
    const runs: Array<[string, string, string[]]> = [
      ['plexus-node join', NODE_BIN, ['join', '--bootstrap', bootstrap, '--model', fixtureDir('tiny-llama'), '--quantize', 'q3']],
      ['plexus-client generate', CLIENT_BIN, ['generate', '--local', '--model', fixtureDir('tiny-llama'), '--token-ids', '1', '--quantize', 'q3']],
      ['plexus-client serve', CLIENT_BIN, ['serve', '--local', '--model', fixtureDir('tiny-llama'), '--quantize', 'q3']]
    ]
    for (const [what, bin, args] of runs) {
      it(`${what} --quantize q3: a one-line usage error, exit 2`, async () => {
        const r = await runCli(bin, args)
        assert.equal(r.code, 2, r.stderr)
        const name = bin === NODE_BIN ? 'plexus-node' : 'plexus-client'
        assert.equal(r.stderr.split('\n')[0], `${name}: --quantize q3: expected one of q8_0, q4_k`)
      })
    }
  })
})
