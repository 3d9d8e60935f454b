import { open, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { schemaProblem } from '@plexus/p2p'
import { MODEL_FILES_PROTOCOL, PROTOCOLS, jsonErrorFrame, serveChannel } from '@plexus/protocol'
import type { ChannelCodec } from '@plexus/protocol'
import type { PlexusNode } from '@plexus/p2p'
import { CheckpointError, CLIENT_FILES, headTensorShapes, MANIFEST_FILE } from '@plexus/runtime'
import type { Checkpoint, ModelManifest } from '@plexus/runtime'
import type { Connection, Logger, Stream } from '@libp2p/interface'

/**
 * `/plexus/model/1.0.0`: the client's parts of a model (config, tokenizer, manifest, embeddings,
 * final norm, LM head), so a user of a public swarm needs no checkpoint of their own. Every
 * message is varint-length-prefixed; requests are JSON (schemas/model-file-request.schema.json)
 * and may follow each other on one stream, answered in order:
 *
 *   {"op":"list","modelId"}   → {"modelId","files":[{"name","size"}],"tensors":[{"name","dtype","shape","size"}]}
 *   {"op":"read","modelId","kind":"file"|"tensor","name","offset","length"}
 *                             → {"name","offset","length","size"[,"dtype","shape"]}, then one frame of `length` raw bytes
 *   anything wrong            → {"error":"<why>"}, then the server closes the stream
 *
 * Reads are chunks of at most 4 MiB (one lpStream frame under libp2p's default limits), so any
 * model size works, and the client bounds its own buffering by how many reads it keeps in flight
 * (libp2p streams have no receiver backpressure). Only the whitelisted files and the head tensors
 * are ever served; names are never joined from the request, so nothing else can be reached.
 * The client verifies everything against the model id (a peer's word is not trusted).
 */
export { MODEL_FILES_PROTOCOL }
export const MODEL_FILE_REQUEST_SCHEMA = 'model-file-request'
/** Side files served from the model directory (the manifest comes from memory). */
export const MODEL_FILE_NAMES: readonly string[] = ['config.json', ...CLIENT_FILES, MANIFEST_FILE]
export const MAX_MODEL_CHUNK_BYTES = 4 << 20
export const MAX_MODEL_REQUEST_BYTES = PROTOCOLS.model.server.maxFrameBytes
/** Larger side files are not offered (real tokenizer.json files are ≤ ~35 MB). */
export const MAX_MODEL_SIDE_FILE_BYTES = 64 << 20

export interface ModelFilesComponents {
  node: PlexusNode
  checkpoint: Checkpoint
  manifest: ModelManifest
}

export interface ModelFilesInit {
  /** Streams served at once by this node (all models); more get a "busy" error. Default 16. */
  maxTransfers?: number
  /** A stream with no request for this long is closed. Default 30 s. */
  idleTimeoutMs?: number
  /** Deadline for sending one response (a slow reader is dropped). Default 60 s. */
  writeTimeoutMs?: number
  /** Per connection. Default 8. */
  maxInboundStreams?: number
}

interface Served { checkpoint: Checkpoint, manifest: ModelManifest, manifestBytes: Uint8Array }
/** A node's model files service (`node.services.plexus.modelFiles`): what it serves, transfers in progress. */
export interface ModelFilesState { models: Map<string, Served[]>, active: number, log: Logger }

type ModelFilesErrorCode = 'bad-request' | 'not-served' | 'busy'
/** A refused request: the client is told why, then the stream closes. */
class RequestError extends Error {
  readonly code: ModelFilesErrorCode
  constructor (message: string, code: ModelFilesErrorCode = 'bad-request') { super(message); this.name = 'RequestError'; this.code = code }
}

const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { fatal: true })

/**
 * Serves the client's parts of `manifest`'s model from `checkpoint`. Throws (serving nothing)
 * when the checkpoint lacks a head tensor. Returns a function that stops serving this model.
 * The node's first registration sets the handler's options (`init`). Not offered over limited
 * (relayed) connections: their 128 KiB budget could not carry a head anyway.
 */
export async function serveModelFiles (components: ModelFilesComponents, init: ModelFilesInit = {}): Promise<() => Promise<void>> {
  const { node, checkpoint, manifest } = components
  // A server may hold only some shards: offer the head only if all of it is here.
  for (const [name, shape] of headTensorShapes(checkpoint.config)) {
    try {
      await checkpoint.entry(name, shape)
    } catch (err) {
      throw new CheckpointError(`cannot offer the client parts of ${manifest.name}: ${(err as Error).message}`)
    }
  }
  const served: Served = { checkpoint, manifest, manifestBytes: enc.encode(JSON.stringify(manifest, null, 2) + '\n') }
  // one handler per node serves every registered model (two servers may share a node)
  const services = node.services.plexus
  let state = services.modelFiles
  if (state == null) {
    const s: ModelFilesState = { models: new Map(), active: 0, log: node.logger.forComponent('plexus:model-files') }
    services.modelFiles = state = s
    const opts = {
      maxTransfers: init.maxTransfers ?? 16,
      idleMs: init.idleTimeoutMs ?? PROTOCOLS.model.server.idleMs,
      writeMs: init.writeTimeoutMs ?? PROTOCOLS.model.server.writeMs
    }
    await node.handle(MODEL_FILES_PROTOCOL, async (stream: Stream, connection: Connection) => {
      await handleStream(s, opts, stream, connection)
    }, { maxInboundStreams: init.maxInboundStreams ?? 8 })
  }
  const list = state.models.get(manifest.id) ?? []
  list.push(served)
  state.models.set(manifest.id, list)
  const mine = state
  return async () => {
    const l = mine.models.get(manifest.id) ?? []
    const i = l.indexOf(served)
    if (i >= 0) l.splice(i, 1)
    if (l.length === 0) mine.models.delete(manifest.id)
    if (mine.models.size === 0 && services.modelFiles === mine) {
      services.modelFiles = undefined
      await node.unhandle(MODEL_FILES_PROTOCOL)
    }
  }
}

/** The model files protocol on the channel: JSON requests, `{"error", "code"}` refusals. */
const codec: ChannelCodec<Request, ModelFilesErrorCode> = {
  decode: (frame) => parseRequest(frame),
  encodeError: jsonErrorFrame,
  isOwn: (e): e is RequestError => e instanceof RequestError,
  channelCode: () => 'bad-request'
}

async function handleStream (state: ModelFilesState, opts: { maxTransfers: number, idleMs: number, writeMs: number }, stream: Stream, connection: Connection): Promise<void> {
  const handles = new Map<string, Promise<FileHandle>>()
  state.active++
  try {
    await serveChannel(stream, connection.remotePeer.toString(), {
      name: 'model-files',
      codec,
      log: state.log,
      // requests are small: a client sending far ahead of its answers is cut off
      limits: { maxFrameBytes: MAX_MODEL_REQUEST_BYTES, idleMs: opts.idleMs, writeMs: opts.writeMs, maxBufferBytes: 64 * 1024 },
      admit: () => { if (state.active > opts.maxTransfers) throw new RequestError(`busy: ${opts.maxTransfers} transfers in progress, try another peer`, 'busy') },
      dispatch: async (req, channel) => { await channel.writeV(await answer(state, req, handles)) },
      cleanup: async () => { for (const h of handles.values()) await h.then(async fh => { await fh.close() }, () => {}) }
    })
  } finally {
    state.active--
  }
}

type Request = { op: 'list', modelId: string } |
{ op: 'read', modelId: string, kind: 'file' | 'tensor', name: string, offset: number, length: number }

function parseRequest (frame: Uint8Array): Request {
  let value: unknown
  try {
    value = JSON.parse(dec.decode(frame))
  } catch {
    throw new RequestError('request is not JSON')
  }
  const problem = schemaProblem(MODEL_FILE_REQUEST_SCHEMA, value)
  if (problem != null) throw new RequestError(`bad request: ${problem}`)
  return value as Request
}

/** The response frames for one request. */
async function answer (state: ModelFilesState, req: Request, handles: Map<string, Promise<FileHandle>>): Promise<Uint8Array[]> {
  const served = state.models.get(req.modelId)?.[0]
  if (served == null) throw new RequestError(`model ${req.modelId} is not served here`, 'not-served')
  const json = (v: object): Uint8Array => enc.encode(JSON.stringify(v))
  if (req.op === 'list') {
    return [json({ modelId: req.modelId, files: await listFiles(served), tensors: await listTensors(served) })]
  }
  const { kind, name, offset, length } = req
  if (kind === 'tensor') {
    const shape = headTensorShapes(served.checkpoint.config).get(name)
    if (shape == null) throw new RequestError(`${name} is not a head tensor of this model`)
    const { file, entry } = await served.checkpoint.entry(name, shape)
    const size = entry.end - entry.begin
    checkRange(name, size, offset, length)
    // raw stored bytes of [offset, offset + length) of the tensor (a positional read)
    const data = await file.readBytes({ ...entry, begin: entry.begin + offset, end: entry.begin + offset + length })
    return [json({ name, offset, length, size, dtype: entry.dtype, shape: entry.shape }), data]
  }
  if (!MODEL_FILE_NAMES.includes(name)) throw new RequestError(`${name} is not a served file`)
  if (name === MANIFEST_FILE) {
    const bytes = served.manifestBytes
    checkRange(name, bytes.byteLength, offset, length)
    return [json({ name, offset, length, size: bytes.byteLength }), bytes.subarray(offset, offset + length)]
  }
  const key = `${req.modelId}/${name}`
  let h = handles.get(key)
  if (h == null) {
    h = openSideFile(served, name)
    h.catch(() => handles.delete(key))
    handles.set(key, h)
  }
  const fh = await h
  const size = (await fh.stat()).size
  checkRange(name, size, offset, length)
  const data = new Uint8Array(length)
  for (let done = 0; done < length;) {
    const { bytesRead } = await fh.read(data, done, length - done, offset + done)
    if (bytesRead === 0) throw new Error(`${name} shrank while being read`)
    done += bytesRead
  }
  return [json({ name, offset, length, size }), data]
}

function checkRange (name: string, size: number, offset: number, length: number): void {
  if (offset + length > size) throw new RequestError(`range [${offset}, ${offset + length}) is outside ${name} (${size} bytes)`)
}

/** A regular file of the model directory under the size limit, else a RequestError. */
async function openSideFile (served: Served, name: string): Promise<FileHandle> {
  const path = join(served.checkpoint.dir, name)
  // stat first: opening a FIFO would block
  const st = await stat(path).catch(() => undefined)
  if (st == null || !st.isFile() || st.size > MAX_MODEL_SIDE_FILE_BYTES) throw new RequestError(`${name} is not offered for this model`)
  return await open(path, 'r')
}

async function listFiles (served: Served): Promise<Array<{ name: string, size: number }>> {
  const out: Array<{ name: string, size: number }> = []
  for (const name of MODEL_FILE_NAMES) {
    if (name === MANIFEST_FILE) { out.push({ name, size: served.manifestBytes.byteLength }); continue }
    const st = await stat(join(served.checkpoint.dir, name)).catch(() => undefined)
    if (st?.isFile() === true && st.size <= MAX_MODEL_SIDE_FILE_BYTES) out.push({ name, size: st.size })
  }
  return out
}

async function listTensors (served: Served): Promise<Array<{ name: string, dtype: string, shape: number[], size: number }>> {
  const out = []
  for (const [name, shape] of headTensorShapes(served.checkpoint.config)) {
    const { entry } = await served.checkpoint.entry(name, shape)
    out.push({ name, dtype: entry.dtype, shape: entry.shape, size: entry.end - entry.begin })
  }
  return out
}
