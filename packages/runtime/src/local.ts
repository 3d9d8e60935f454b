import { Checkpoint } from './checkpoint.ts'
import { ModelHead } from './head.ts'
import { Span } from './span.ts'
import type { KVCache } from './span.ts'
import type { SessionPipeline } from './generate.ts'
import type { ModelConfig } from './config.ts'

/** A whole model in this process: the head plus spans covering every block. */
export class LocalModel {
  readonly checkpoint: Checkpoint
  readonly head: ModelHead
  readonly spans: Span[]

  private constructor (checkpoint: Checkpoint, head: ModelHead, spans: Span[]) {
    this.checkpoint = checkpoint
    this.head = head
    this.spans = spans
  }

  get config (): ModelConfig { return this.checkpoint.config }

  /** `cuts` splits the blocks into spans, e.g. `[4, 8]` → `[0,4) [4,8) [8,L)`; results are identical either way. */
  static async load (dir: string, opts: { cuts?: number[] } = {}): Promise<LocalModel> {
    const ckpt = await Checkpoint.open(dir)
    const L = ckpt.config.numLayers
    const bounds = [0, ...(opts.cuts ?? []), L]
    const spans: Span[] = []
    try {
      for (let i = 0; i + 1 < bounds.length; i++) spans.push(await Span.load(ckpt, bounds[i], bounds[i + 1]))
      const head = await ModelHead.load(ckpt)
      return new LocalModel(ckpt, head, spans)
    } catch (err) {
      spans.forEach(s => s.dispose())
      await ckpt.close()
      throw err
    }
  }

  session (maxLength = this.config.maxPositions): SessionPipeline {
    const caches: KVCache[] = this.spans.map(s => s.newCache(maxLength))
    return {
      forward: async (hidden, tokens) => {
        let h = hidden
        for (let i = 0; i < this.spans.length; i++) h = await this.spans[i].forward(h, tokens, caches[i])
        return h
      },
      close: async () => { caches.forEach(c => c.dispose()) }
    }
  }

  async dispose (): Promise<void> {
    this.spans.forEach(s => s.dispose())
    this.head.dispose()
    await this.checkpoint.close()
  }
}
