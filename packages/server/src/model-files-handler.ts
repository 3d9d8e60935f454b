import type { FileHandle } from 'node:fs/promises'
import { schemaProblem } from '@plexus/p2p'
import { MODEL_FILES_PROTOCOL, PROTOCOLS, jsonErrorFrame, serveChannel } from '@plexus/p2p'
import type { ByteBudget, ChannelCodec } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { CheckpointError, headTensorShapes } from '@plexus/runtime'
import type { Checkpoint, ModelManifest } from '@plexus/runtime'
import type { Connection, Logger, Stream } from '@libp2p/interface'
import { MAX_MODEL_SIDE_FILE_BYTES, MODEL_FILE_NAMES, RequestError } from './handlers/model-files-common.ts'
import type { ModelFilesErrorCode, ModelFilesRequest, Served } from './handlers/model-files-common.ts'
import { handleList } from './handlers/model-files-list.ts'
import { handleRead } from './handlers/model-files-read.ts'

/**
 * `/plexus/model/1.0.0`: the client's parts of a model (config, tokenizer, manifest, embeddings,
 * final norm, LM head), so a user of a public swarm needs no checkpoint of their own. Every
 * message is varint-length-prefixed; requests are JSON (schemas/model-file-request.schema.json)
 * and may follow each other on one stream, answered in order:
 *
 *   {"op":"list","modelId"}   → {"modelId","files":[{"name","size"}],"tensors":[{"name","dtype","shape","size"}]}
 *   {"op":"read","modelId","kind":"file"|"tensor","name","offset","length"}
 *                             → {"name","offset","length","size"[,"dtype","shape"]}, then one frame of `length` raw bytes
 *   anything wrong            → {"error":"<why>","code":"bad-request"|"not-served"|"busy"|"internal"}, then the server closes the stream
 *
 * Reads are chunks of at most 4 MiB (the client's frame limit, PROTOCOLS.model), so any
 * model size works, and the client bounds its own buffering by how many reads it keeps in flight
 * (libp2p streams have no receiver backpressure). Only the whitelisted files and the head tensors
 * are ever served; names are never joined from the request, so nothing else can be reached.
 * The client verifies everything against the model id (a peer's word is not trusted).
 */
export { MODEL_FILES_PROTOCOL, MODEL_FILE_NAMES, MAX_MODEL_SIDE_FILE_BYTES }
export const MODEL_FILE_REQUEST_SCHEMA = 'model-file-request'
export const MAX_MODEL_CHUNK_BYTES = 4 << 20
export const MAX_MODEL_REQUEST_BYTES = PROTOCOLS.model.server.maxFrameBytes

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

/** A node's model files service (`node.services.plexus.modelFiles`): what it serves, transfers in progress. */
export interface ModelFilesState { models: Map<string, Served[]>, active: number, log: Logger, budget?: ByteBudget }

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
    const s: ModelFilesState = { models: new Map(), active: 0, log: node.logger.forComponent('plexus:model-files'), budget: services.budget }
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
const codec: ChannelCodec<ModelFilesRequest, ModelFilesErrorCode> = {
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
      budget: state.budget,
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

function parseRequest (frame: Uint8Array): ModelFilesRequest {
  let value: unknown
  try {
    value = JSON.parse(dec.decode(frame))
  } catch {
    throw new RequestError('request is not JSON')
  }
  const problem = schemaProblem(MODEL_FILE_REQUEST_SCHEMA, value)
  if (problem != null) throw new RequestError(`bad request: ${problem}`)
  return value as ModelFilesRequest
}

/** The response frames for one request: one handler per op (handlers/model-files-*.ts). */
async function answer (state: ModelFilesState, req: ModelFilesRequest, handles: Map<string, Promise<FileHandle>>): Promise<Uint8Array[]> {
  const served = state.models.get(req.modelId)?.[0]
  if (served == null) throw new RequestError(`model ${req.modelId} is not served here`, 'not-served')
  return req.op === 'list' ? await handleList(served, req) : await handleRead(served, req, handles)
}
