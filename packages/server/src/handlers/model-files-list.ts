import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { headTensorShapes, MANIFEST_FILE } from '@plexus/runtime'
import { MAX_MODEL_SIDE_FILE_BYTES, MODEL_FILE_NAMES, json } from './model-files-common.ts'
import type { ModelFilesRequest, Served } from './model-files-common.ts'

/** `list`: the files and head tensors offered, with their sizes (one frame). */
export async function handleList (served: Served, req: ModelFilesRequest & { op: 'list' }): Promise<Uint8Array[]> {
  return [json({ modelId: req.modelId, files: await listFiles(served), tensors: await listTensors(served) })]
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
