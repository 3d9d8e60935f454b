import { readFile, writeFile, rename } from 'node:fs/promises'
import { join, basename } from 'node:path'
import { blake3 } from '@noble/hashes/blake3.js'
import { bytesToHex, utf8ToBytes } from '@noble/hashes/utils.js'
import { createBLAKE3 } from 'hash-wasm'
import type { Checkpoint, RawTensor } from './checkpoint.ts'
import type { ModelConfig } from './config.ts'

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
}

export const MANIFEST_FILE = 'plexus-manifest.json'

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

export function modelIdOf (configD: string, headD: string, blocks: string[]): string {
  return bytesToHex(blake3(utf8ToBytes(['plexus-model/1', configD, headD, ...blocks].join('\n'))))
}

export function shortId (id: string): string { return id.slice(0, 12) }

/** Reads every tensor once (block by block, never the whole model at a time). */
export async function computeManifest (ckpt: Checkpoint, name = basename(ckpt.dir)): Promise<ModelManifest> {
  const blockDigests: string[] = []
  for (let b = 0; b < ckpt.config.numLayers; b++) blockDigests.push(await tensorsDigest(await ckpt.readBlockRaw(b)))
  const headDigest = await tensorsDigest(await ckpt.readHeadRaw())
  const cd = configDigest(ckpt.config)
  return { format: 'plexus-model/1', name, id: modelIdOf(cd, headDigest, blockDigests), configDigest: cd, headDigest, blockDigests }
}

/** Checks a manifest's internal consistency and that it describes this config. */
export function checkManifest (m: ModelManifest, cfg: ModelConfig): void {
  if (m?.format !== 'plexus-model/1') throw new Error(`${MANIFEST_FILE}: unknown format ${JSON.stringify(m?.format)}`)
  if (!Array.isArray(m.blockDigests) || m.blockDigests.length !== cfg.numLayers) {
    throw new Error(`${MANIFEST_FILE}: lists ${m.blockDigests?.length} block digests for a model of ${cfg.numLayers} blocks`)
  }
  if (m.configDigest !== configDigest(cfg)) throw new Error(`${MANIFEST_FILE}: config digest does not match config.json`)
  if (m.id !== modelIdOf(m.configDigest, m.headDigest, m.blockDigests)) throw new Error(`${MANIFEST_FILE}: id does not match its digests`)
}

/**
 * The manifest stored beside the weights, or a fresh one (written back when the directory is
 * writable, so the full read happens once per checkpoint).
 */
export async function loadManifest (ckpt: Checkpoint, opts: { write?: boolean, name?: string } = {}): Promise<ModelManifest> {
  const path = join(ckpt.dir, MANIFEST_FILE)
  let text: string | undefined
  try { text = await readFile(path, 'utf8') } catch (err: any) { if (err.code !== 'ENOENT') throw err }
  if (text != null) {
    let m: ModelManifest
    try { m = JSON.parse(text) } catch (err: any) { throw new Error(`${MANIFEST_FILE}: invalid JSON (${err.message})`) }
    checkManifest(m, ckpt.config)
    return m
  }
  const m = await computeManifest(ckpt, opts.name)
  if (opts.write !== false) {
    // Atomic: other processes may be reading it at the same moment.
    const tmp = `${path}.${process.pid}.tmp`
    try { await writeFile(tmp, JSON.stringify(m, null, 2) + '\n'); await rename(tmp, path) } catch {}
  }
  return m
}
