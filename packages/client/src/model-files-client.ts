// Client side of /plexus/model/1.0.0 (served by packages/server/src/model-files-handler.ts).
import { Channel, PROTOCOLS } from '@plexus/p2p'
import type { DType, ProgressMeter } from '@plexus/runtime'
import type { Stream } from '@libp2p/interface'
import type { ResolveModelOptions } from './model-fetch.ts'

export const MAX_FRAME_BYTES = PROTOCOLS.model.client.maxFrameBytes

export interface Listing { files: Array<{ name: string, size: number }>, tensors: Array<{ name: string, dtype: DType, shape: number[], size: number }> }

/** Client side of the protocol: pipelined chunk reads on one stream, every answer checked. */
export class FilesClient {
  received = 0
  meter?: ProgressMeter
  private readonly channel: Channel
  private readonly id: string
  private readonly chunk: number
  private readonly window: number
  private readonly opts: ResolveModelOptions

  constructor (stream: Stream, id: string, opts: ResolveModelOptions) {
    this.id = id
    this.opts = opts
    this.chunk = Math.max(1, Math.min(opts.chunkBytes ?? 1 << 20, MAX_FRAME_BYTES))
    this.window = Math.max(1, opts.window ?? 8)
    // everything a source may send before we read: `window` answers of one chunk each
    this.channel = new Channel(stream, { ...PROTOCOLS.model.client, maxBufferBytes: this.window * (this.chunk + 4096) + MAX_FRAME_BYTES })
  }

  async list (): Promise<Listing> {
    await this.send({ op: 'list', modelId: this.id })
    const r = await this.answer()
    if (!Array.isArray(r.files) || !Array.isArray(r.tensors) ||
      !r.files.every((f: any) => typeof f?.name === 'string' && Number.isSafeInteger(f.size) && f.size >= 0) ||
      !r.tensors.every((t: any) => typeof t?.name === 'string' && Array.isArray(t.shape) && Number.isSafeInteger(t.size))) {
      throw new Error('sent a malformed listing')
    }
    return r as Listing
  }

  async readAll (kind: 'file' | 'tensor', name: string, size: number): Promise<Uint8Array> {
    const out = new Uint8Array(size)
    let at = 0
    await this.read(kind, name, size, (chunk) => { out.set(chunk, at); at += chunk.length })
    return out
  }

  /** Streams `size` bytes of `name` to `sink` in order, keeping up to `window` reads in flight. */
  async read (kind: 'file' | 'tensor', name: string, size: number, sink: (chunk: Uint8Array) => unknown, tensor?: { dtype: string, shape: number[] }): Promise<void> {
    const pending: Array<{ offset: number, length: number }> = []
    let next = 0
    for (let done = 0; done < size;) {
      while (pending.length < this.window && next < size) {
        const length = Math.min(this.chunk, size - next)
        await this.send({ op: 'read', modelId: this.id, kind, name, offset: next, length })
        pending.push({ offset: next, length })
        next += length
      }
      const want = pending.shift()!
      const h = await this.answer()
      if (h.name !== name || h.offset !== want.offset || h.length !== want.length || h.size !== size ||
        (tensor != null && (h.dtype !== tensor.dtype || JSON.stringify(h.shape) !== JSON.stringify(tensor.shape)))) {
        throw new Error(`answered the read of ${name} [${want.offset}, ${want.offset + want.length}) with ${JSON.stringify(h).slice(0, 200)}`)
      }
      const data = await this.frame()
      if (data.byteLength !== want.length) throw new Error(`sent ${data.byteLength} bytes of ${name} for a ${want.length}-byte chunk`)
      this.received += data.byteLength
      await sink(data)
      this.meter?.add(data.byteLength, name)
      done += want.length
    }
  }

  async close (): Promise<void> {
    await this.channel.close()
  }

  private async send (req: object): Promise<void> {
    await this.channel.write(new TextEncoder().encode(JSON.stringify(req)), this.deadline())
  }

  private async answer (): Promise<any> {
    const r = parseJson('answer', await this.frame()) as any
    if (r == null || typeof r !== 'object') throw new Error('sent an answer that is not a JSON object')
    if (typeof r.error === 'string') throw new Error(`reports: ${r.error.slice(0, 300)}`)
    return r
  }

  private async frame (): Promise<Uint8Array> {
    const f = await this.channel.read(this.deadline())
    if (f == null) throw new Error('closed the stream before answering')
    return f
  }

  private deadline (): AbortSignal {
    const t = AbortSignal.timeout(this.opts.chunkTimeoutMs ?? 30_000)
    return this.opts.signal != null ? AbortSignal.any([this.opts.signal, t]) : t
  }
}

export function parseJson (what: string, bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${(err as Error).message}`)
  }
}
