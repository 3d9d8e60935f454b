// A model source read as float32: the weights a quantized span holds, dequantized (the reference of
// computations that do not round activations).
import { rawFloat32 } from '@plexus/runtime'
import type { ModelSource, RawTensor } from '@plexus/runtime'

/** `src` with every tensor widened to float32: the weights the quantized span holds, dequantized. */
export function dequantized (src: ModelSource): ModelSource {
  const widen = (t: RawTensor): RawTensor => ({ ...t, dtype: 'F32', bytes: new Uint8Array(rawFloat32(t).buffer) })
  return {
    format: src.format,
    path: src.path,
    name: `${src.name}:dequantized`,
    config: src.config,
    has: n => src.has(n),
    readRaw: async (n, shape) => widen(await src.readRaw(n, shape)),
    readFloat32: async (n, shape) => await src.readFloat32(n, shape),
    readBlockRaw: async b => (await src.readBlockRaw(b)).map(widen),
    readHeadRaw: async () => await src.readHeadRaw(),
    checkBlock: b => src.checkBlock(b),
    storedBytes: async names => await src.storedBytes(names),
    tokenizer: async () => await src.tokenizer(),
    tokenizerConfig: async () => await src.tokenizerConfig(),
    close: async () => { await src.close() }
  }
}

