// What every model source does the same way once it can read one tensor by name: whole blocks and
// the head in their canonical order, bounds from the config, stored sizes from the index.
import { blockTensorShapes, headTensorShapes } from './config.ts'
import type { ModelConfig } from './config.ts'
import type { RawTensor } from './checkpoint.ts'

export abstract class TensorSource {
  abstract readonly config: ModelConfig
  abstract readRaw (name: string, expectedShape?: number[]): Promise<RawTensor>
  /** Where the named tensor's bytes lie in its file (from the index alone, nothing read). */
  protected abstract storedRange (name: string): Promise<{ begin: number, end: number }>
  /** This source's error for a request it cannot serve (its class, the file named). */
  protected abstract refusal (message: string): Error

  async storedBytes (names: string[]): Promise<number> {
    let n = 0
    for (const name of names) { const r = await this.storedRange(name); n += r.end - r.begin }
    return n
  }

  /** All tensors of one block, shape-checked, as raw bytes (name order is canonical). */
  async readBlockRaw (block: number): Promise<RawTensor[]> {
    this.checkBlock(block)
    return await readAll(this, blockTensorShapes(this.config, block))
  }

  /** Embeddings, final norm, LM head (absent when tied: the embeddings stand in for it). */
  async readHeadRaw (): Promise<RawTensor[]> {
    return await readAll(this, headTensorShapes(this.config))
  }

  checkBlock (block: number): void {
    if (!Number.isInteger(block) || block < 0 || block >= this.config.numLayers) {
      throw this.refusal(`block ${block} is outside the model (0..${this.config.numLayers - 1})`)
    }
  }
}

/** Reads the named tensors in order, each checked against its shape (one model source or another). */
export async function readAll (src: { readRaw: (name: string, shape?: number[]) => Promise<RawTensor> }, shapes: Iterable<[string, number[]]>): Promise<RawTensor[]> {
  const out: RawTensor[] = []
  for (const [name, shape] of shapes) out.push(await src.readRaw(name, shape))
  return out
}
