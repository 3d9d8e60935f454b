// What a span's step leaves in memory (issue 12): tfjs's wasm heap never shrinks, so a step frees
// its intermediates as it goes and runs the MLP in row chunks; neither may change a single float.
import assert from 'node:assert/strict'
import * as tf from '@tensorflow/tfjs-core'
import { initBackend } from '../src/backend.ts'
import { Checkpoint } from '../src/checkpoint.ts'
import { Span } from '../src/span.ts'
import { mlpChunking, mlpChunkRows } from '../src/block.ts'
import { withQuantization } from '../src/quant/quantized-source.ts'
import { hiddenStates } from './support/hidden-states.ts'
import type { ModelSource } from '../src/model-source.ts'
import { fixtureDir } from '../../../test/support/fixtures.ts'

const CASES: Array<{ name: string, fixture: string, quantize?: 'q8_0' }> = [
  { name: 'float32 (CPU engine, matmul_f32)', fixture: 'tiny-llama' },
  { name: 'bf16 (CPU kernel)', fixture: 'tiny-qwen2-tied-bf16' },
  { name: 'q8_0 (CPU kernel)', fixture: 'tiny-llama', quantize: 'q8_0' }
]


describe('a span step\'s memory (wasm)', function () {
  this.timeout(120_000)
  before(async () => { await initBackend('wasm') })

  for (const c of CASES) {
    describe(c.name, () => {
      let ckpt: ModelSource
      let span: Span
      before(async () => {
        ckpt = withQuantization(await Checkpoint.open(fixtureDir(c.fixture)), c.quantize)
        span = await Span.load(ckpt, 0, ckpt.config.numLayers)
      })
      after(async () => { span?.dispose(); await ckpt?.close() })

      it('a step longer than the MLP\'s row chunk gives the floats of the same step unchunked', async () => {
        const rows = 40
        const x = hiddenStates(rows, ckpt.config.hiddenSize)
        assert.ok(mlpChunkRows(ckpt.config) >= rows, 'by default these rows run as one chunk')
        const whole = span.newCache(64)
        const chunked = span.newCache(64)
        const saved = mlpChunking.bytes
        try {
          const a = await span.forward(x, rows, whole)
          mlpChunking.bytes = 1
          assert.equal(mlpChunkRows(ckpt.config), 16)
          const b = await span.forward(x, rows, chunked)
          assert.deepEqual(b, a)
        } finally {
          mlpChunking.bytes = saved
          whole.dispose()
          chunked.dispose()
        }
      })

      it('leaves no tensor behind but its cache\'s keys and values', async () => {
        const before = tf.memory().numTensors
        const cache = span.newCache(64)
        await span.forward(hiddenStates(24, ckpt.config.hiddenSize), 24, cache)
        await span.forward(hiddenStates(1, ckpt.config.hiddenSize), 1, cache)
        // tfjs spans cache keys and values as two tensors a block; the CPU engine in its own memory
        assert.equal(tf.memory().numTensors, before + (span.engine === 'tfjs' ? 2 * span.size : 0))
        if (span.engine !== 'tfjs') assert.ok(cache.bytes() > 0)
        cache.dispose()
        assert.equal(tf.memory().numTensors, before)
      })
    })
  }
})
