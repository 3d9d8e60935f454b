import { open, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { headTensorShapes, MANIFEST_FILE } from '@plexus/runtime'
import { MAX_MODEL_SIDE_FILE_BYTES, MODEL_FILE_NAMES, RequestError, json } from './model-files-common.ts'
import type { ModelFilesRequest, Served } from './model-files-common.ts'

/**
 * `read`: `length` bytes of a file or head tensor from `offset` on: a header frame, then the
 * bytes. Names are looked up in the whitelist, never joined from the request.
 */
export async function handleRead (served: Served, req: ModelFilesRequest & { op: 'read' }, handles: Map<string, Promise<FileHandle>>): Promise<Uint8Array[]> {
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
  // one handle per file and stream: a transfer's reads do not reopen it
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
