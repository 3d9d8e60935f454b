import { CLIENT_FILES, MANIFEST_FILE } from '@plexus/runtime'
import type { Checkpoint, ModelManifest } from '@plexus/runtime'

/** Side files served from the model directory (the manifest comes from memory). */
export const MODEL_FILE_NAMES: readonly string[] = ['config.json', ...CLIENT_FILES, MANIFEST_FILE]
/** Larger side files are not offered (real tokenizer.json files are ≤ ~35 MB). */
export const MAX_MODEL_SIDE_FILE_BYTES = 64 << 20

/** One model served: its checkpoint, and its manifest as sent. */
export interface Served { checkpoint: Checkpoint, manifest: ModelManifest, manifestBytes: Uint8Array }

export type ModelFilesRequest = { op: 'list', modelId: string } |
{ op: 'read', modelId: string, kind: 'file' | 'tensor', name: string, offset: number, length: number }

export type ModelFilesErrorCode = 'bad-request' | 'not-served' | 'busy'

/** A refused request: the client is told why, then the stream closes. */
export class RequestError extends Error {
  readonly code: ModelFilesErrorCode
  constructor (message: string, code: ModelFilesErrorCode = 'bad-request') { super(message); this.name = 'RequestError'; this.code = code }
}

const enc = new TextEncoder()
export function json (v: object): Uint8Array { return enc.encode(JSON.stringify(v)) }
