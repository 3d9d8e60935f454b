import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename } from 'node:path'
import { GgufError, GGUF_VALUE, DEQUANTIZABLE, ggmlType } from './types.ts'
import type { GgmlType, GgufValue, DequantizableType } from './types.ts'
import { dequantize } from './dequant.ts'

export interface GgufTensorInfo {
  name: string
  /** ggml order: innermost (contiguous) dimension first. */
  dims: number[]
  /** Row-major order (dims reversed), as Hugging Face shapes are written. */
  shape: number[]
  type: GgmlType
  elements: number
  /** Absolute byte range in the file. */
  begin: number
  end: number
}

const MAGIC = 0x46554747 // "GGUF" read as a little-endian u32
const DEFAULT_ALIGNMENT = 32
/** First read of the header: enough for the metadata of vocabularies of ~250k tokens. */
const CHUNK = 16 << 20
const MAX_DIMS = 4

/**
 * A GGUF file (v2/v3 layout): header, metadata key/values, tensor infos, then the aligned data
 * section. Only the header is read at open; tensors are read with positioned reads on demand,
 * so a server reads the tensors of its own blocks and nothing else.
 */
export class GgufFile {
  readonly path: string
  readonly name: string
  readonly version: number
  readonly size: number
  readonly alignment: number
  /** Absolute offset of the data section. */
  readonly dataOffset: number
  readonly metadata: Map<string, GgufValue>
  readonly tensors: Map<string, GgufTensorInfo>
  private readonly fh: FileHandle

  private constructor (path: string, fh: FileHandle, h: Header) {
    this.path = path
    this.name = basename(path)
    this.fh = fh
    this.version = h.version
    this.size = h.size
    this.alignment = h.alignment
    this.dataOffset = h.dataOffset
    this.metadata = h.metadata
    this.tensors = h.tensors
  }

  static async open (path: string): Promise<GgufFile> {
    const name = basename(path)
    let fh: FileHandle
    try {
      fh = await open(path, 'r')
    } catch (err: any) {
      throw new GgufError(`${name}: cannot open (${err.code ?? err.message})`)
    }
    try {
      return new GgufFile(path, fh, await readHeader(name, fh))
    } catch (err) {
      await fh.close()
      throw err
    }
  }

  tensor (name: string): GgufTensorInfo {
    const t = this.tensors.get(name)
    if (t == null) throw new GgufError(`${this.name}: tensor ${name} is missing from the file`)
    return t
  }

  /** A tensor's bytes as stored, in a fresh buffer. */
  async readBytes (name: string): Promise<Uint8Array> {
    const t = this.tensor(name)
    const n = t.end - t.begin
    const buf = new Uint8Array(new ArrayBuffer(n))
    let done = 0
    while (done < n) {
      const { bytesRead } = await this.fh.read(buf, done, n - done, t.begin + done)
      if (bytesRead === 0) throw new GgufError(`${this.name}: tensor ${name}: truncated while reading (the file shrank?)`)
      done += bytesRead
    }
    return buf
  }

  /** A tensor as float32 in ggml's element order (its `shape`, row-major). */
  async readFloat32 (name: string): Promise<Float32Array> {
    const t = this.tensor(name)
    if (!(DEQUANTIZABLE as readonly string[]).includes(t.type.name)) {
      throw new GgufError(`${this.name}: tensor ${name}: type ${t.type.name} is not supported (supported: ${DEQUANTIZABLE.join(', ')})`)
    }
    return dequantize(t.type.name as DequantizableType, await this.readBytes(name), t.elements, { reuse: true })
  }

  async close (): Promise<void> { await this.fh.close() }
}

interface Header {
  version: number
  size: number
  alignment: number
  dataOffset: number
  metadata: Map<string, GgufValue>
  tensors: Map<string, GgufTensorInfo>
}

/** Thrown when the header runs past the bytes read so far (but not past the file). */
const MORE = Symbol('more')

/** Sequential, synchronous reads of the header from the first bytes of the file. */
class Cursor {
  pos = 0
  /** What is being read, for errors. */
  what = 'the header'
  readonly file: string
  readonly size: number
  private readonly buf: Buffer
  constructor (file: string, buf: Buffer, size: number) { this.file = file; this.buf = buf; this.size = size }

  fail (why: string): never { throw new GgufError(`${this.file}: ${why}`) }

  private need (n: number): number {
    if (this.pos + n > this.size) this.fail(`truncated: the file (${this.size} bytes) ends inside ${this.what}`)
    if (this.pos + n > this.buf.length) throw MORE
    const at = this.pos
    this.pos += n
    return at
  }

  u32 (): number { return this.buf.readUInt32LE(this.need(4)) }
  u64 (): number {
    const o = this.need(8)
    // Two u32 halves: no BigInt per string length (vocabularies have 10⁵–10⁶ strings).
    const hi = this.buf.readUInt32LE(o + 4)
    if (hi > 0x1fffff) this.fail(`corrupt: ${this.what} holds a size of ${this.buf.readBigUInt64LE(o)}`)
    return hi * 0x100000000 + this.buf.readUInt32LE(o)
  }

  str (): string {
    const n = this.u64()
    const o = this.need(n)
    return this.buf.toString('utf8', o, o + n)
  }

  remaining (): number { return this.size - this.pos }

  value (type: number, key: string): GgufValue {
    const V = GGUF_VALUE
    const b = this.buf
    switch (type) {
      case V.UINT8: return b[this.need(1)]
      case V.INT8: return b.readInt8(this.need(1))
      case V.UINT16: return b.readUInt16LE(this.need(2))
      case V.INT16: return b.readInt16LE(this.need(2))
      case V.UINT32: return b.readUInt32LE(this.need(4))
      case V.INT32: return b.readInt32LE(this.need(4))
      case V.FLOAT32: return b.readFloatLE(this.need(4))
      case V.FLOAT64: return b.readDoubleLE(this.need(8))
      case V.BOOL: return b[this.need(1)] !== 0
      case V.STRING: return this.str()
      case V.UINT64: return exact(b.readBigUInt64LE(this.need(8)))
      case V.INT64: return exact(b.readBigInt64LE(this.need(8)))
      case V.ARRAY: {
        const elemType = this.u32()
        const count = this.u64()
        // Every element takes at least one byte: a count beyond the file is corruption, not a huge array.
        if (count > this.remaining()) this.fail(`truncated: the file ends inside ${this.what} (an array of ${count})`)
        const out: GgufValue[] = new Array(count)
        // Vocabularies are arrays of 10⁵–10⁶ strings: read them without the per-element dispatch.
        if (elemType === V.STRING) for (let i = 0; i < count; i++) out[i] = this.str()
        else for (let i = 0; i < count; i++) out[i] = this.value(elemType, key)
        return out
      }
      default: return this.fail(`corrupt: metadata key ${key} has unknown value type ${type}`)
    }
  }
}

function exact (v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v
}

/** Reads the header's first bytes, and twice as many each time it turns out longer. */
async function readHeader (file: string, fh: FileHandle): Promise<Header> {
  const size = (await fh.stat()).size
  for (let len = Math.min(CHUNK, size); ; len = Math.min(len * 2, size)) {
    const buf = Buffer.alloc(len)
    let done = 0
    while (done < len) {
      const { bytesRead } = await fh.read(buf, done, len - done, done)
      if (bytesRead === 0) throw new GgufError(`${file}: truncated while reading the header (the file shrank?)`)
      done += bytesRead
    }
    try {
      return parseHeader(new Cursor(file, buf, size))
    } catch (err) {
      if (err !== MORE) throw err
    }
  }
}

function parseHeader (c: Cursor): Header {
  const size = c.size
  if (size < 4) c.fail(`truncated: ${size} bytes, too short for a GGUF header`)
  const magic = c.u32()
  if (magic !== MAGIC) c.fail(`not a GGUF file (bad magic 0x${magic.toString(16).padStart(8, '0')}, expected "GGUF")`)
  const version = c.u32()
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? ' (a big-endian file?)' : ''
    c.fail(`unsupported GGUF version ${version}${hint} (supported: 2, 3)`)
  }
  const tensorCount = c.u64()
  const kvCount = c.u64()
  // A key takes ≥ 13 bytes, a tensor info ≥ 24: counts beyond the file mean corruption.
  if (kvCount * 13 + tensorCount * 24 > c.remaining()) {
    c.fail(`truncated or corrupt: ${kvCount} metadata keys and ${tensorCount} tensors cannot fit in ${size} bytes`)
  }

  const metadata = new Map<string, GgufValue>()
  const types = new Map<string, number>()
  for (let i = 0; i < kvCount; i++) {
    c.what = `metadata key #${i}`
    const key = c.str()
    c.what = `metadata key ${key}`
    const type = c.u32()
    if (metadata.has(key)) c.fail(`corrupt: metadata key ${key} appears twice`)
    metadata.set(key, c.value(type, key))
    types.set(key, type)
  }

  let alignment = DEFAULT_ALIGNMENT
  if (metadata.has('general.alignment')) {
    const a = metadata.get('general.alignment')
    if (types.get('general.alignment') !== GGUF_VALUE.UINT32 || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      c.fail(`corrupt: general.alignment must be a power of two (u32), got ${String(a)}`)
    }
    alignment = a as number
  }

  const infos: Array<{ name: string, dims: number[], type: GgmlType, offset: number }> = []
  for (let i = 0; i < tensorCount; i++) {
    c.what = `tensor info #${i}`
    const name = c.str()
    c.what = `tensor info for ${name}`
    const bad = (why: string): never => c.fail(`tensor ${name}: ${why}`)
    const nDims = c.u32()
    if (nDims < 1 || nDims > MAX_DIMS) bad(`corrupt: ${nDims} dimensions (1 to ${MAX_DIMS} allowed)`)
    const dims: number[] = []
    for (let d = 0; d < nDims; d++) dims.push(c.u64())
    const typeId = c.u32()
    const offset = c.u64()
    const type = ggmlType(typeId)
    if (type == null) bad(`unknown tensor type ${typeId}`)
    infos.push({ name, dims, type: type as GgmlType, offset })
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment

  const tensors = new Map<string, GgufTensorInfo>()
  for (const { name, dims, type, offset } of infos) {
    const bad = (why: string): never => c.fail(`tensor ${name}: ${why}`)
    if (tensors.has(name)) bad('corrupt: the name appears twice')
    const elements = dims.reduce((a, b) => a * b, 1)
    if (!Number.isSafeInteger(elements)) bad(`corrupt: dimensions ${JSON.stringify(dims)}`)
    if (dims[0] % type.blockSize !== 0) bad(`row length ${dims[0]} is not a multiple of the ${type.name} block size ${type.blockSize}`)
    if (offset % alignment !== 0) bad(`corrupt: data offset ${offset} is not a multiple of the alignment ${alignment}`)
    const begin = dataOffset + offset
    const end = begin + elements / type.blockSize * type.typeSize
    if (end > size) bad(`data [${begin}, ${end}) lies beyond the end of the file (${size} bytes; truncated?)`)
    tensors.set(name, { name, dims, shape: [...dims].reverse(), type, elements, begin, end })
  }
  return { version, size, alignment, dataOffset, metadata, tensors }
}
