// Test helpers for GGUF: a small writer for hand-made files (any metadata type, any tensor type)
// and a bridge to llama.cpp's own dequantizers in node-llama-cpp's libggml-base.
import { writeFile, mkdtemp, readFile, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { GGUF_VALUE } from '@plexus/runtime'
import { ROOT } from './fixtures.ts'

const run = promisify(execFile)

export type KV = { type: number, value: unknown, elemType?: number }

export interface TensorSpec { name: string, dims: number[], type: number, data: Uint8Array }

class Out {
  parts: Buffer[] = []
  len = 0
  push (b: Buffer): void { this.parts.push(b); this.len += b.length }
  u32 (v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b) }
  u64 (v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b) }
  str (s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b) }
  scalar (type: number, v: any): void {
    const V = GGUF_VALUE
    const b = Buffer.alloc(8)
    switch (type) {
      case V.UINT8: b.writeUInt8(v); this.push(b.subarray(0, 1)); break
      case V.INT8: b.writeInt8(v); this.push(b.subarray(0, 1)); break
      case V.UINT16: b.writeUInt16LE(v); this.push(b.subarray(0, 2)); break
      case V.INT16: b.writeInt16LE(v); this.push(b.subarray(0, 2)); break
      case V.UINT32: b.writeUInt32LE(v); this.push(b.subarray(0, 4)); break
      case V.INT32: b.writeInt32LE(v); this.push(b.subarray(0, 4)); break
      case V.FLOAT32: b.writeFloatLE(v); this.push(b.subarray(0, 4)); break
      case V.FLOAT64: b.writeDoubleLE(v); this.push(b); break
      case V.BOOL: b.writeUInt8(v === true ? 1 : 0); this.push(b.subarray(0, 1)); break
      case V.UINT64: b.writeBigUInt64LE(BigInt(v)); this.push(b); break
      case V.INT64: b.writeBigInt64LE(BigInt(v)); this.push(b); break
      case V.STRING: this.str(v); break
      default: throw new Error(`no scalar writer for type ${type}`)
    }
  }
}

/** A GGUF v3 file: the keys in order, then tensor infos, then data at `alignment`. */
export function buildGguf (kv: Array<[string, KV]>, tensors: TensorSpec[], opts: { alignment?: number, version?: number } = {}): Buffer {
  const align = opts.alignment ?? 32
  const o = new Out()
  o.u32(0x46554747)
  o.u32(opts.version ?? 3)
  o.u64(tensors.length)
  o.u64(kv.length)
  for (const [key, v] of kv) {
    o.str(key)
    o.u32(v.type)
    if (v.type === GGUF_VALUE.ARRAY) {
      const items = v.value as unknown[]
      o.u32(v.elemType as number)
      o.u64(items.length)
      for (const x of items) o.scalar(v.elemType as number, x)
    } else {
      o.scalar(v.type, v.value)
    }
  }
  let offset = 0
  const offsets: number[] = []
  for (const t of tensors) {
    o.str(t.name)
    o.u32(t.dims.length)
    for (const d of t.dims) o.u64(d)
    o.u32(t.type)
    o.u64(offset)
    offsets.push(offset)
    offset = Math.ceil((offset + t.data.length) / align) * align
  }
  const dataStart = Math.ceil(o.len / align) * align
  const file = Buffer.alloc(dataStart + (tensors.length === 0 ? 0 : offsets[offsets.length - 1] + tensors[tensors.length - 1].data.length))
  Buffer.concat(o.parts).copy(file, 0)
  tensors.forEach((t, i) => file.set(t.data, dataStart + offsets[i]))
  return file
}

/** Where the ggml type id of tensor `name` sits in a GGUF file's header. */
export function tensorTypeOffset (file: Buffer, name: string): number {
  const key = Buffer.from(name, 'utf8')
  let at = -1
  // The tensor info is the occurrence preceded by its u64 length and followed by n_dims ≤ 4.
  for (let i = file.indexOf(key); i >= 0; i = file.indexOf(key, i + 1)) {
    if (i >= 8 && Number(file.readBigUInt64LE(i - 8)) === key.length && file.readUInt32LE(i + key.length) <= 4) { at = i; break }
  }
  if (at < 0) throw new Error(`no tensor info for ${name}`)
  const nDims = file.readUInt32LE(at + key.length)
  return at + key.length + 4 + 8 * nDims
}

export const GGML_BASE = join(ROOT, 'scripts', 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64', 'libggml-base.so')

/**
 * For a test that compares with llama.cpp: returns when its baseline can run here; otherwise the
 * test fails saying what is missing, unless PLEXUS_SKIP_LLAMA_CPP=1 opts out (then it skips, loudly).
 * `npm test` installs the baseline first (baseline:install).
 */
export async function requireLlamaCpp (ctx: Mocha.Context): Promise<void> {
  const why = await llamaCppUnavailable()
  if (why == null) return
  if (process.env.PLEXUS_SKIP_LLAMA_CPP === '1') {
    console.log(`      skipped (PLEXUS_SKIP_LLAMA_CPP=1): ${why}`)
    ctx.skip()
  }
  throw new Error(`llama.cpp's baseline is needed for this comparison: ${why}; or set PLEXUS_SKIP_LLAMA_CPP=1 to skip it`)
}

/** Why llama.cpp's dequantizers cannot be called here, or undefined when they can. */
export async function llamaCppUnavailable (): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.arch !== 'x64') return `node-llama-cpp's libggml-base is checked on linux-x64 only (this is ${process.platform}-${process.arch})`
  if (!existsSync(GGML_BASE)) return `${GGML_BASE} is missing (run npm run baseline:install)`
  try { await run('cc', ['--version']) } catch { return 'no C compiler (cc) to build the bridge to libggml-base' }
  return undefined
}

/** Compiles the bridge once; returns a function that dequantizes with llama.cpp's symbol. */
export async function llamaCppDequantizer (): Promise<{ dequantize: (symbol: string, bytes: Uint8Array, n: number) => Promise<Float32Array>, dispose: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'plexus-ggml-'))
  const exe = join(dir, 'ggml-dequant')
  await run('cc', ['-O2', '-o', exe, join(ROOT, 'test', 'support', 'ggml-dequant.c'), '-ldl'])
  let k = 0
  return {
    dequantize: async (symbol, bytes, n) => {
      const inPath = join(dir, `in${k}`)
      const outPath = join(dir, `out${k++}`)
      await writeFile(inPath, bytes)
      await run(exe, [GGML_BASE, symbol, String(n), inPath, outPath])
      const b = await readFile(outPath)
      return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length))
    },
    dispose: async () => { await rm(dir, { recursive: true, force: true }) }
  }
}
