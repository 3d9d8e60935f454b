import { open, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename } from 'node:path'
import { bf16ToF32, f16ToF32 } from './dtype.ts'
import { PlexusError } from './errors.ts'

/** Storage types Plexus reads; everything is widened to float32 at load (tfjs has no 16-bit floats). */
export type DType = 'F32' | 'F16' | 'BF16'
export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 }

export interface TensorEntry {
  name: string
  dtype: DType
  shape: number[]
  /** Absolute byte range in the file. */
  begin: number
  end: number
}

export class CheckpointError extends PlexusError {
  constructor (message: string, code = 'checkpoint') { super(code, message); this.name = 'CheckpointError' }
}

/** Largest header we accept: real headers of 70B-class shards are well under this. */
const MAX_HEADER_BYTES = 100 << 20

/**
 * One `.safetensors` file: an 8-byte little-endian header length, a JSON header, then raw data.
 * The header is validated in full before any tensor is trusted.
 */
export class SafetensorsFile {
  readonly path: string
  readonly tensors: Map<string, TensorEntry>
  readonly metadata: Record<string, string>
  private readonly fh: FileHandle

  private constructor (path: string, fh: FileHandle, tensors: Map<string, TensorEntry>, metadata: Record<string, string>) {
    this.path = path
    this.fh = fh
    this.tensors = tensors
    this.metadata = metadata
  }

  static async open (path: string): Promise<SafetensorsFile> {
    const name = basename(path)
    let fh: FileHandle
    try {
      fh = await open(path, 'r')
    } catch (err: any) {
      throw new CheckpointError(`${name}: cannot open (${err.code ?? err.message})`)
    }
    try {
      const size = (await fh.stat()).size
      if (size < 8) throw new CheckpointError(`${name}: truncated: ${size} bytes, shorter than the 8-byte header length`)
      const lenBuf = Buffer.alloc(8)
      await fh.read(lenBuf, 0, 8, 0)
      const headerLen = Number(lenBuf.readBigUInt64LE(0))
      if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > size) {
        throw new CheckpointError(`${name}: truncated or corrupt: header length ${headerLen} exceeds the file (${size} bytes)`)
      }
      const headerBuf = Buffer.alloc(headerLen)
      await fh.read(headerBuf, 0, headerLen, 8)
      let header: Record<string, any>
      try {
        header = JSON.parse(headerBuf.toString('utf8'))
      } catch (err: any) {
        throw new CheckpointError(`${name}: corrupt header: invalid JSON (${err.message})`)
      }
      if (header == null || typeof header !== 'object' || Array.isArray(header)) {
        throw new CheckpointError(`${name}: corrupt header: not a JSON object`)
      }
      const dataStart = 8 + headerLen
      const tensors = new Map<string, TensorEntry>()
      let metadata: Record<string, string> = {}
      for (const [tname, info] of Object.entries(header)) {
        if (tname === '__metadata__') { metadata = info ?? {}; continue }
        tensors.set(tname, parseEntry(name, tname, info, dataStart, size))
      }
      return new SafetensorsFile(path, fh, tensors, metadata)
    } catch (err) {
      await fh.close()
      throw err
    }
  }

  /** Raw little-endian bytes of a tensor, in a fresh (aligned) buffer. */
  async readBytes (entry: TensorEntry): Promise<Uint8Array> {
    const n = entry.end - entry.begin
    const buf = new Uint8Array(new ArrayBuffer(n))
    let done = 0
    while (done < n) {
      const { bytesRead } = await this.fh.read(buf, done, n - done, entry.begin + done)
      if (bytesRead === 0) throw new CheckpointError(`${basename(this.path)}: tensor ${entry.name}: truncated while reading`)
      done += bytesRead
    }
    return buf
  }

  async close (): Promise<void> {
    await this.fh.close()
  }
}

function parseEntry (file: string, name: string, info: any, dataStart: number, size: number): TensorEntry {
  const bad = (why: string): never => { throw new CheckpointError(`${file}: tensor ${name}: ${why}`) }
  if (info == null || typeof info !== 'object') bad('header entry is not an object')
  const dtype = info.dtype
  if (!(dtype in DTYPE_BYTES)) bad(`unsupported dtype ${JSON.stringify(dtype)} (supported: F32, F16, BF16)`)
  const shape = info.shape
  if (!Array.isArray(shape) || !shape.every((d: unknown) => Number.isInteger(d) && (d as number) >= 0)) bad(`invalid shape ${JSON.stringify(shape)}`)
  const offs = info.data_offsets
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o: unknown) => Number.isInteger(o) && (o as number) >= 0) || offs[1] < offs[0]) {
    bad(`invalid data_offsets ${JSON.stringify(offs)}`)
  }
  const numel = shape.reduce((a: number, b: number) => a * b, 1)
  const expected = numel * DTYPE_BYTES[dtype as DType]
  if (offs[1] - offs[0] !== expected) bad(`data_offsets span ${offs[1] - offs[0]} bytes but ${dtype}${JSON.stringify(shape)} needs ${expected}`)
  const begin = dataStart + offs[0]
  const end = dataStart + offs[1]
  if (end > size) bad(`data_offsets [${offs[0]}, ${offs[1]}] fall outside the file (truncated? file has ${size - dataStart} data bytes)`)
  return { name, dtype, shape, begin, end }
}

/** Widens stored bytes to float32 (F32: a view of them). */
export function toFloat32 (bytes: Uint8Array, dtype: DType): Float32Array {
  if (dtype === 'F32') return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
  const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2)
  return dtype === 'BF16' ? bf16ToF32(src) : f16ToF32(src)
}

export async function fileExists (path: string): Promise<boolean> {
  try { await stat(path); return true } catch { return false }
}
