// Loading only what a span needs, and a one-line error naming the file and tensor for each kind of bad checkpoint.
import assert from 'node:assert/strict'
import { mkdtemp, cp, rm, readFile, writeFile, truncate, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, Checkpoint, Span, ModelHead, readModelConfig, parseModelConfig, loadManifest, tensorsDigest } from '@plexus/runtime'
import { fixtureDir, golden, maxAbsDiff } from '../../../test/support/fixtures.ts'
import { computeManifest } from '../src/model-id.ts'

const SHARDED = 'tiny-llama3-sharded-bf16'

async function copyFixture (name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'plexus-ckpt-'))
  await cp(fixtureDir(name), dir, { recursive: true })
  return dir
}

/** Rewrites a safetensors header through `edit`, keeping the data (offsets are relative to it). */
async function editHeader (file: string, edit: (h: any) => void): Promise<void> {
  const buf = await readFile(file)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))
  edit(header)
  const hb = Buffer.from(JSON.stringify(header))
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(hb.length))
  await writeFile(file, Buffer.concat([len, hb, buf.subarray(8 + n)]))
}

describe('checkpoints', function () {
  const dirs: string[] = []
  const temp = async (name: string): Promise<string> => { const d = await copyFixture(name); dirs.push(d); return d }
  before(async () => { await initBackend('wasm') })
  after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })

  it('loads a span of a sharded model whose unneeded shard was deleted', async () => {
    const dir = await temp(SHARDED)
    const g = golden(SHARDED)
    await rm(join(dir, 'model-00001-of-00002.safetensors'))
    const ckpt = await Checkpoint.open(dir)
    assert.deepEqual(ckpt.shardsFor(['model.layers.2.mlp.up_proj.weight', 'model.layers.3.mlp.up_proj.weight']), ['model-00002-of-00002.safetensors'])
    const span = await Span.load(ckpt, 2, 4)
    const hs = g.hidden_at_block_boundaries.h
    const out = await span.forward(Float32Array.from(hs[2].flat()), g.prompt_ids.length, span.newCache(32))
    assert.ok(maxAbsDiff(out, hs[4].flat()) < 1e-3)
    span.dispose()
    // the blocks in the deleted shard name it
    await assert.rejects(Span.load(ckpt, 0, 1), /^CheckpointError: model-00001-of-00002\.safetensors: missing shard$/)
    await assert.rejects(ModelHead.load(ckpt), /model-00001-of-00002\.safetensors: missing shard/)
    await ckpt.close()
  })

  it('names the file of a truncated checkpoint', async () => {
    const dir = await temp('tiny-llama')
    const f = join(dir, 'model.safetensors')
    await truncate(f, (await stat(f)).size - 1000)
    await assert.rejects(Checkpoint.open(dir), (err: Error) => {
      assert.equal(err.name, 'CheckpointError')
      assert.match(err.message, /^model\.safetensors: tensor [\w.]+: data_offsets \[\d+, \d+\] fall outside the file \(truncated\? file has \d+ data bytes\)$/)
      return true
    })
    await truncate(f, 5)
    await assert.rejects(Checkpoint.open(dir), /^CheckpointError: model\.safetensors: truncated: 5 bytes, shorter than the 8-byte header length$/)
  })

  it('names the tensor whose offsets fall outside the file', async () => {
    const dir = await temp('tiny-llama')
    const f = join(dir, 'model.safetensors')
    await editHeader(f, h => { const t = h['model.norm.weight']; t.data_offsets = [t.data_offsets[0] + 900000000, t.data_offsets[1] + 900000000] })
    await assert.rejects(Checkpoint.open(dir), /^CheckpointError: model\.safetensors: tensor model\.norm\.weight: data_offsets \[9\d+, 9\d+\] fall outside the file/)
  })

  it('names the tensor whose shape does not match the config', async () => {
    const dir = await temp('tiny-llama')
    const f = join(dir, 'model.safetensors')
    // same byte count, different shape: passes the header check, fails against the config
    await editHeader(f, h => { h['model.layers.1.mlp.up_proj.weight'].shape = [64, 192] })
    const ckpt = await Checkpoint.open(dir)
    await Span.load(ckpt, 0, 1).then(s => s.dispose())
    await assert.rejects(Span.load(ckpt, 1, 2), /^CheckpointError: model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.weight: shape \[64,192\] does not match the config \(expected \[192,64\]\)$/)
    await ckpt.close()
  })

  it('names a missing shard', async () => {
    const dir = await temp(SHARDED)
    await rm(join(dir, 'model-00002-of-00002.safetensors'))
    const ckpt = await Checkpoint.open(dir)
    await assert.rejects(Span.load(ckpt, 3, 4), /^CheckpointError: model-00002-of-00002\.safetensors: missing shard$/)
    await ckpt.close()
  })

  it('rejects an unsupported dtype, naming file and tensor', async () => {
    const dir = await temp('tiny-llama')
    await editHeader(join(dir, 'model.safetensors'), h => { h['lm_head.weight'].dtype = 'I8' })
    await assert.rejects(Checkpoint.open(dir), /^CheckpointError: model\.safetensors: tensor lm_head\.weight: unsupported dtype "I8"/)
  })

  describe('model configs', () => {
    const base = async (): Promise<any> => JSON.parse(await readFile(join(fixtureDir('tiny-llama'), 'config.json'), 'utf8'))

    it('refuses an unsupported architecture, naming the field', async () => {
      const dir = await temp('tiny-llama')
      const c = await base(); c.architectures = ['GPT2LMHeadModel']
      await writeFile(join(dir, 'config.json'), JSON.stringify(c))
      await assert.rejects(Checkpoint.open(dir), /^ConfigError: .*config\.json: architectures "GPT2LMHeadModel" is not supported \(supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM\)$/)
    })
    it('refuses sliding windows and other rope types', async () => {
      const c = await base()
      assert.throws(() => parseModelConfig({ ...c, architectures: ['MistralForCausalLM'], sliding_window: 4096 }), /sliding_window 4096 is not supported/)
      assert.throws(() => parseModelConfig({ ...c, architectures: ['Qwen2ForCausalLM'], use_sliding_window: true }), /use_sliding_window true is not supported/)
      assert.throws(() => parseModelConfig({ ...c, rope_scaling: { rope_type: 'yarn', factor: 4 } }), /rope_scaling\.rope_type "yarn" is not supported \(only llama3\)/)
      assert.throws(() => parseModelConfig({ ...c, hidden_act: 'gelu' }), /hidden_act "gelu" is not supported/)
      assert.throws(() => parseModelConfig({ ...c, num_key_value_heads: 3 }), /num_key_value_heads 3 must divide num_attention_heads 4/)
    })
    it('reads GQA, head_dim, llama3 scaling, tied embeddings and biases', async () => {
      const l3 = await readModelConfig(fixtureDir(SHARDED))
      assert.equal(l3.headDim, 32)
      assert.deepEqual(l3.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 128 })
      const q = await readModelConfig(fixtureDir('tiny-qwen2-tied-bf16'))
      assert.equal(q.tieWordEmbeddings, true)
      assert.equal(q.qkvBias, true)
      assert.equal(q.numKvHeads, 2)
      assert.ok(parseModelConfig({ ...(await base()), architectures: ['MistralForCausalLM'], sliding_window: null }).architecture === 'MistralForCausalLM')
    })
  })

  describe('model identity', () => {
    it('is a digest of the config and per-block weights; a block digest needs only that block', async () => {
      const dir = await temp(SHARDED)
      const ckpt = await Checkpoint.open(dir)
      const m = await computeManifest(ckpt)
      assert.match(m.id, /^[0-9a-f]{64}$/)
      assert.equal(new Set(m.blockDigests).size, 4)
      await ckpt.close()
      // with shard 1 gone, blocks 2–3 can still be verified
      await rm(join(dir, 'model-00001-of-00002.safetensors'))
      const partial = await Checkpoint.open(dir)
      assert.equal(await tensorsDigest(await partial.readBlockRaw(3)), m.blockDigests[3])
      await partial.close()
    })

    it('changes when one weight changes, and a stored manifest is checked', async () => {
      const a = await Checkpoint.open(fixtureDir('tiny-llama'))
      const ma = await computeManifest(a)
      await a.close()
      const dir = await temp('tiny-llama')
      await rm(join(dir, 'plexus-manifest.json'), { force: true })
      const f = join(dir, 'model.safetensors')
      const buf = await readFile(f)
      buf[buf.length - 1] ^= 1 // last byte of the last tensor
      await writeFile(f, buf)
      const b = await Checkpoint.open(dir)
      const mb = await loadManifest(b)
      assert.notEqual(mb.id, ma.id)
      assert.equal(mb.configDigest, ma.configDigest)
      assert.equal(mb.blockDigests.filter((d, i) => d !== ma.blockDigests[i]).length + (mb.headDigest !== ma.headDigest ? 1 : 0), 1)
      // the manifest was written beside the weights; a tampered one is refused
      const saved = JSON.parse(await readFile(join(dir, 'plexus-manifest.json'), 'utf8'))
      assert.equal(saved.id, mb.id)
      saved.blockDigests[0] = ma.blockDigests[1]
      await writeFile(join(dir, 'plexus-manifest.json'), JSON.stringify(saved))
      await assert.rejects(loadManifest(b), /plexus-manifest\.json: id does not match its digests/)
      await b.close()
    })
  })
})
