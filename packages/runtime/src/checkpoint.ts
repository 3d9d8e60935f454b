import { readFile } from 'node:fs/promises'
import { join, basename } from 'node:path'
import { readModelConfig } from './config.ts'
import type { ModelConfig } from './config.ts'
import { SafetensorsFile, CheckpointError, toFloat32, fileExists } from './safetensors.ts'
import type { TensorEntry, DType } from './safetensors.ts'
import { dequantize } from './gguf/dequant.ts'
import { loadTokenizer } from './tokenizer.ts'
import type { TextTokenizer } from './tokenizer.ts'
import { readTokenizerConfig } from './chat-template.ts'
import type { ModelSource } from './model-source.ts'
import { TensorSource } from './tensor-source.ts'

/** ggml block formats a weight can be held in (quantized GGUF files, or `--quantize`). */
export type QuantDType = 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K'
/** A tensor's storage: a safetensors float type or a ggml block format. */
export type WeightDType = DType | QuantDType

/** One tensor as stored: `bytes` in `dtype`, row-major (a quantized row is whole blocks). */
export interface RawTensor { name: string, dtype: WeightDType, shape: number[], bytes: Uint8Array }

/** A raw tensor as float32 (quantized blocks dequantized exactly as llama.cpp does). */
export function rawFloat32 (raw: Pick<RawTensor, 'dtype' | 'bytes' | 'shape'>): Float32Array {
  if (raw.dtype === 'F32' || raw.dtype === 'F16' || raw.dtype === 'BF16') return toFloat32(raw.bytes, raw.dtype)
  return dequantize(raw.dtype, raw.bytes, raw.shape.reduce((a, b) => a * b, 1))
}

/**
 * A Hugging Face model directory. Shards are opened lazily, so a server that serves
 * blocks 10–19 never opens (or needs) the shards holding other blocks.
 */
export class Checkpoint extends TensorSource implements ModelSource {
  readonly format = 'safetensors'
  readonly dir: string
  readonly config: ModelConfig
  /** tensor name → shard file name */
  private readonly weightMap: Map<string, string>
  private readonly files = new Map<string, Promise<SafetensorsFile>>()

  private constructor (dir: string, config: ModelConfig, weightMap: Map<string, string>) {
    super()
    this.dir = dir
    this.config = config
    this.weightMap = weightMap
  }

  get path (): string { return this.dir }
  get name (): string { return basename(this.dir) }

  static async open (dir: string): Promise<Checkpoint> {
    const config = await readModelConfig(dir)
    const indexPath = join(dir, 'model.safetensors.index.json')
    const weightMap = new Map<string, string>()
    const ckpt = (map: Map<string, string>): Checkpoint => new Checkpoint(dir, config, map)
    if (await fileExists(indexPath)) {
      let index: any
      try {
        index = JSON.parse(await readFile(indexPath, 'utf8'))
      } catch (err: any) {
        throw new CheckpointError(`model.safetensors.index.json: invalid JSON (${err.message})`)
      }
      if (index?.weight_map == null || typeof index.weight_map !== 'object') {
        throw new CheckpointError('model.safetensors.index.json: missing weight_map')
      }
      for (const [name, file] of Object.entries(index.weight_map)) {
        if (typeof file !== 'string' || file.includes('/') || file.includes('\\')) {
          throw new CheckpointError(`model.safetensors.index.json: tensor ${name}: invalid shard name ${JSON.stringify(file)}`)
        }
        weightMap.set(name, file)
      }
      return ckpt(weightMap)
    }
    const single = 'model.safetensors'
    if (!(await fileExists(join(dir, single)))) {
      throw new CheckpointError(`${dir}: no model.safetensors or model.safetensors.index.json`)
    }
    const c = ckpt(weightMap)
    const f = await c.file(single)
    for (const name of f.tensors.keys()) weightMap.set(name, single)
    return c
  }

  private async file (name: string): Promise<SafetensorsFile> {
    let p = this.files.get(name)
    if (p == null) {
      const path = join(this.dir, name)
      p = (async () => {
        if (!(await fileExists(path))) throw new CheckpointError(`${name}: missing shard`)
        return await SafetensorsFile.open(path)
      })()
      this.files.set(name, p)
      p.catch(() => this.files.delete(name))
    }
    return await p
  }

  has (name: string): boolean { return this.weightMap.has(name) }

  /** Shard files that hold the given tensors. */
  shardsFor (names: Iterable<string>): string[] {
    const s = new Set<string>()
    for (const n of names) { const f = this.weightMap.get(n); if (f != null) s.add(f) }
    return [...s].sort()
  }

  async entry (name: string, expectedShape?: number[]): Promise<{ file: SafetensorsFile, entry: TensorEntry }> {
    const fname = this.weightMap.get(name)
    if (fname == null) throw new CheckpointError(`${basename(this.dir)}: tensor ${name} is missing from the checkpoint`)
    const file = await this.file(fname)
    const entry = file.tensors.get(name)
    if (entry == null) throw new CheckpointError(`${fname}: tensor ${name} is listed in the index but absent from the shard`)
    if (expectedShape != null && !sameShape(entry.shape, expectedShape)) {
      throw new CheckpointError(`${fname}: tensor ${name}: shape ${JSON.stringify(entry.shape)} does not match the config (expected ${JSON.stringify(expectedShape)})`)
    }
    return { file, entry }
  }

  async readRaw (name: string, expectedShape?: number[]): Promise<RawTensor> {
    const { file, entry } = await this.entry(name, expectedShape)
    return { name, dtype: entry.dtype, shape: entry.shape, bytes: await file.readBytes(entry) }
  }

  async readFloat32 (name: string, expectedShape?: number[]): Promise<Float32Array> {
    const raw = await this.readRaw(name, expectedShape)
    return rawFloat32(raw)
  }

  protected async storedRange (name: string): Promise<{ begin: number, end: number }> { return (await this.entry(name)).entry }

  protected refusal (message: string): Error { return new CheckpointError(message) }

  async tokenizer (): Promise<TextTokenizer | undefined> { return await loadTokenizer(this.dir) }

  async tokenizerConfig (): Promise<Record<string, unknown> | undefined> { return await readTokenizerConfig(this.dir) }

  async close (): Promise<void> {
    const files = [...this.files.values()]
    this.files.clear()
    for (const p of files) { try { await (await p).close() } catch {} }
  }
}

function sameShape (a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
