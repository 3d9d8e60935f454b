import { readFile, writeFile, rename, rm, stat, mkdir, realpath } from 'node:fs/promises'
import { join } from 'node:path'
import { blake3 } from '@noble/hashes/blake3.js'
import { bytesToHex, utf8ToBytes } from '@noble/hashes/utils.js'
import { createBLAKE3 } from 'hash-wasm'
import type { RawTensor } from './checkpoint.ts'
import type { ModelSource } from './model-source.ts'
import type { ModelConfig } from './config.ts'
import { QuantizedSource, isQuantFormat } from './quant/quantized-source.ts'
import { cacheDir } from './cache-dir.ts'
import { ProgressMeter, storedPartBytes } from './progress.ts'
import type { ProgressListener } from './progress.ts'
import type { QuantFormat } from './quant/quantized-source.ts'

/**
 * What a model id names: the config and the exact weights, block by block. A block's digest
 * needs only that block's tensors, so a server verifies what it serves without reading the rest.
 */
export interface ModelManifest {
  format: 'plexus-model/1'
  /** Human name (not trusted: two different weight sets may share a name, never an id). */
  name: string
  /** BLAKE3 (hex) over the config, head and block digests. */
  id: string
  configDigest: string
  headDigest: string
  blockDigests: string[]
  /**
   * BLAKE3 (hex) of each client-side file the model directory holds (CLIENT_FILES), by name; for
   * a GGUF file one entry, GGUF_TOKENIZER_KEY, over its tokenizer.* metadata (tokenizer and chat
   * template). Covered by the id: a peer cannot serve another tokenizer or template under it.
   * Absent or empty: none (the id is then computed as before these were covered).
   */
  files?: Record<string, string>
  /**
   * Set when the blocks' linear weights are quantized at load (`--quantize`): the id is then
   * quantizedModelId of the stored weights' id, and the digests stay those of the stored tensors.
   */
  quantize?: QuantFormat
}

export const MANIFEST_FILE = 'plexus-manifest.json'
/** What a client takes from a model directory besides config and head: covered by the id when present. */
export const CLIENT_FILES: readonly string[] = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json', 'chat_template.jinja']
/** The files entry of a GGUF model: its tokenizer.* metadata (vocabulary, merges, chat template). */
export const GGUF_TOKENIZER_KEY = 'gguf:tokenizer-metadata'

/** BLAKE3 (hex) of a client-side file's bytes. */
export function fileDigest (bytes: Uint8Array): string { return bytesToHex(blake3(bytes)) }

/** The digests of the client-side files of `src` (see ModelManifest.files). */
export async function clientFilesDigests (src: ModelSource): Promise<Record<string, string>> {
  if (src instanceof QuantizedSource) return await clientFilesDigests(src.base)
  const out: Record<string, string> = {}
  if (src.format === 'gguf') {
    const meta = (src as ModelSource & { file?: { metadata: Map<string, unknown> } }).file?.metadata
    if (meta == null) return out
    const keys = [...meta.keys()].filter(k => k.startsWith('tokenizer.')).sort()
    if (keys.length === 0) return out
    const text = JSON.stringify(keys.map(k => [k, meta.get(k)]), (_, v) => typeof v === 'bigint' ? v.toString() : v)
    out[GGUF_TOKENIZER_KEY] = fileDigest(utf8ToBytes(text))
    return out
  }
  for (const name of CLIENT_FILES) {
    let bytes: Uint8Array
    try { bytes = await readFile(join(src.path, name)) } catch (err: any) {
      if (err.code === 'ENOENT') continue
      throw err
    }
    out[name] = fileDigest(bytes)
  }
  return out
}

function sameFiles (a: Record<string, string> | undefined, b: Record<string, string>): boolean {
  const ka = Object.keys(a ?? {}).sort()
  return ka.length === Object.keys(b).length && ka.every(k => a![k] === b[k])
}

/**
 * BLAKE3 over tensors in order: name, dtype, shape and raw stored bytes of each. Weights go
 * through hash-wasm's BLAKE3 (≈ 580 MB/s here, 13× the pure-JS one; identical digests).
 */
export async function tensorsDigest (tensors: RawTensor[]): Promise<string> {
  const h = await createBLAKE3()
  h.init()
  for (const t of tensors) {
    const meta = utf8ToBytes(JSON.stringify([t.name, t.dtype, t.shape]))
    const len = new Uint8Array(4)
    new DataView(len.buffer).setUint32(0, meta.length, true)
    h.update(len)
    h.update(meta)
    h.update(t.bytes)
  }
  return h.digest('hex')
}

/** Digest of the config fields that change the computation (key order fixed). */
export function configDigest (cfg: ModelConfig): string {
  const canonical = JSON.stringify(cfg, Object.keys(cfg).sort())
  return bytesToHex(blake3(utf8ToBytes(canonical)))
}

export function modelIdOf (configD: string, headD: string, blocks: string[], files: Record<string, string> = {}): string {
  // no files: the id as it was before they were covered (a model without them keeps its id)
  const names = Object.keys(files).sort()
  const tail = names.length === 0 ? [] : ['files', ...names.map(n => `${n} ${files[n]}`)]
  return bytesToHex(blake3(utf8ToBytes(['plexus-model/1', configD, headD, ...blocks, ...tail].join('\n'))))
}

/** The id of a model whose weights are `baseId`'s quantized as `format` (deterministically). */
export function quantizedModelId (baseId: string, format: QuantFormat): string {
  return bytesToHex(blake3(utf8ToBytes(['plexus-model/1', 'quantize', format, baseId].join('\n'))))
}

/** The manifest of `base`'s model quantized as `format` (its name tagged like `small:q8_0`). */
export function quantizedManifest (base: ModelManifest, format: QuantFormat): ModelManifest {
  if (base.quantize === format) return base
  if (base.quantize != null) throw new Error(`${base.name} is already quantized as ${base.quantize}: it cannot be quantized as ${format}`)
  return { ...base, name: `${base.name}:${format}`, id: quantizedModelId(base.id, format), quantize: format }
}

export function shortId (id: string): string { return id.slice(0, 12) }

/** Reads every tensor once (block by block, never the whole model at a time). */
export async function computeManifest (ckpt: ModelSource, name = ckpt.name, onProgress?: ProgressListener): Promise<ModelManifest> {
  const L = ckpt.config.numLayers
  const sizes = onProgress != null ? await Promise.all([...Array.from({ length: L }, (_, b) => b), 'head' as const].map(async p => await storedPartBytes(ckpt, p))) : []
  const meter = new ProgressMeter(onProgress, { task: 'hash', model: name, total: sizes.reduce((a, b) => a + b, 0) })
  const blockDigests: string[] = []
  for (let b = 0; b < L; b++) {
    blockDigests.push(await tensorsDigest(await ckpt.readBlockRaw(b)))
    meter.add(sizes[b] ?? 0)
  }
  const headDigest = await tensorsDigest(await ckpt.readHeadRaw())
  meter.finish()
  const cd = configDigest(ckpt.config)
  return withFiles({ format: 'plexus-model/1', name, id: '', configDigest: cd, headDigest, blockDigests }, await clientFilesDigests(ckpt))
}

/** `m` covering `files` instead (the weights' digests kept), its id recomputed. */
function withFiles (m: ModelManifest, files: Record<string, string>): ModelManifest {
  const { files: _, id: __, ...rest } = m
  const stored = modelIdOf(m.configDigest, m.headDigest, m.blockDigests, files)
  const out: ModelManifest = { ...rest, id: m.quantize != null ? quantizedModelId(stored, m.quantize) : stored }
  if (Object.keys(files).length > 0) out.files = files
  return out
}

/** Checks a manifest's internal consistency and that it describes this config. */
export function checkManifest (m: ModelManifest, cfg: ModelConfig): void {
  if (m?.format !== 'plexus-model/1') throw new Error(`${MANIFEST_FILE}: unknown format ${JSON.stringify(m?.format)}`)
  if (!Array.isArray(m.blockDigests) || m.blockDigests.length !== cfg.numLayers) {
    throw new Error(`${MANIFEST_FILE}: lists ${m.blockDigests?.length} block digests for a model of ${cfg.numLayers} blocks`)
  }
  if (m.configDigest !== configDigest(cfg)) throw new Error(`${MANIFEST_FILE}: config digest does not match config.json`)
  if (m.quantize != null && !isQuantFormat(m.quantize)) throw new Error(`${MANIFEST_FILE}: unknown quantization ${JSON.stringify(m.quantize)}`)
  if (m.files != null && (typeof m.files !== 'object' || Object.entries(m.files).some(([k, v]) => (!CLIENT_FILES.includes(k) && k !== GGUF_TOKENIZER_KEY) || typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)))) {
    throw new Error(`${MANIFEST_FILE}: malformed files digests`)
  }
  const stored = modelIdOf(m.configDigest, m.headDigest, m.blockDigests, m.files)
  if (m.id !== (m.quantize != null ? quantizedModelId(stored, m.quantize) : stored)) throw new Error(`${MANIFEST_FILE}: id does not match its digests`)
}

/** Where manifests of GGUF files that cannot have one beside them are kept. */
export function manifestCacheDir (): string {
  return process.env.PLEXUS_MANIFEST_DIR ?? cacheDir('manifests')
}

/** What a GGUF manifest was computed from: a changed file (same path) gets a fresh one. */
interface FileStamp { size: number, mtimeMs: number }

/**
 * Where a model's manifest may be stored, in order of preference. A directory keeps it inside;
 * a GGUF file beside itself (`x.gguf.plexus-manifest.json`), or, when that directory is
 * read-only, in the manifest cache under a name derived from the file's real path.
 */
async function manifestPlaces (src: ModelSource): Promise<string[]> {
  if (src.format !== 'gguf') return [join(src.path, MANIFEST_FILE)]
  const key = bytesToHex(blake3(utf8ToBytes(await realpath(src.path)))).slice(0, 32)
  return [`${src.path}.${MANIFEST_FILE}`, join(manifestCacheDir(), `${key}.json`)]
}

async function fileStamp (src: ModelSource): Promise<FileStamp | undefined> {
  if (src.format !== 'gguf') return undefined
  const st = await stat(src.path)
  return { size: st.size, mtimeMs: st.mtimeMs }
}

async function readStored (path: string, cfg: ModelConfig, stamp: FileStamp | undefined): Promise<ModelManifest | undefined> {
  let text: string
  // absent or unreadable: computed afresh (and written to the next place that takes it)
  try { text = await readFile(path, 'utf8') } catch { return undefined }
  let m: ModelManifest & { source?: FileStamp }
  try { m = JSON.parse(text) } catch (err: any) { throw new Error(`${path}: invalid JSON (${err.message})`) }
  if (stamp != null && (m.source?.size !== stamp.size || m.source?.mtimeMs !== stamp.mtimeMs)) return undefined
  checkManifest(m, cfg)
  const { source: _, ...manifest } = m
  return manifest
}

/**
 * The manifest stored with the weights (see manifestPlaces), or a fresh one, written back where
 * possible (atomically) so the full read happens once per checkpoint.
 */
export async function loadManifest (ckpt: ModelSource, opts: { write?: boolean, name?: string, onProgress?: ProgressListener } = {}): Promise<ModelManifest> {
  // a quantized load names the stored weights' manifest and the format, not the quantized bytes
  if (ckpt instanceof QuantizedSource) return quantizedManifest(await loadManifest(ckpt.base, opts), ckpt.quantize)
  const places = await manifestPlaces(ckpt)
  const stamp = await fileStamp(ckpt)
  // the side files are small: always re-digested, so an edited tokenizer or template gets its own id
  const files = await clientFilesDigests(ckpt)
  let m: ModelManifest | undefined
  for (const p of places) {
    m = await readStored(p, ckpt.config, stamp)
    if (m != null) break
  }
  if (m != null && sameFiles(m.files, files)) return m
  m = m != null ? withFiles(m, files) : await computeManifest(ckpt, opts.name, opts.onProgress)
  if (opts.write !== false) {
    const text = JSON.stringify(stamp != null ? { ...m, source: stamp } : m, null, 2) + '\n'
    for (const path of places) {
      // Atomic: other processes may be reading it at the same moment.
      const tmp = `${path}.${process.pid}.tmp`
      try {
        if (path !== places[0]) await mkdir(manifestCacheDir(), { recursive: true })
        await writeFile(tmp, text)
        await rename(tmp, path)
        break
      } catch {
        await rm(tmp, { force: true }).catch(() => {})
      }
    }
  }
  return m
}
