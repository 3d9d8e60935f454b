import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fetchInfo, findBlockHolders, findServers, componentLog } from '@plexus/p2p'
import { MODEL_FILES_PROTOCOL } from '@plexus/p2p'
import type { PlexusNode, PeerId } from '@plexus/p2p'
import {
  Checkpoint, CLIENT_FILES, DTYPE_BYTES, GGUF_TOKENIZER_KEY, MANIFEST_FILE, checkManifest, fileDigest, headTensorShapes, loadTokenizer, parseModelConfig, readModelConfig,
  safetensorsHeader, shortId, tensorsDigest, cacheDir as plexusCacheDir, ProgressMeter, PlexusError
} from '@plexus/runtime'
import type { ModelManifest, ProgressListener } from '@plexus/runtime'
import type { Stream } from '@libp2p/interface'
import { FilesClient, parseJson } from './model-files-client.ts'

/** Served by packages/server/src/model-files-handler.ts (wire format described there). */
export { MODEL_FILES_PROTOCOL }
/** Most bytes accepted per side file (the head tensors are bounded by the verified config). */
const FILE_LIMITS: Record<string, number> = {
  [MANIFEST_FILE]: 4 << 20,
  'config.json': 1 << 20,
  'generation_config.json': 1 << 20,
  'tokenizer.json': 64 << 20,
  'tokenizer_config.json': 16 << 20,
  'special_tokens_map.json': 1 << 20,
  'chat_template.jinja': 1 << 20
}
const FULL_ID = /^[0-9a-f]{64}$/
const ID_PREFIX = /^[0-9a-f]{8,64}$/
const HEAD_FILE = 'model.safetensors'

/**
 * A peer served a tokenizer, tokenizer config, chat template or generation config other than the
 * one the model id covers (one poisoned file is enough to rewrite every prompt): refused, and the
 * next peer is tried.
 */
export class ModelFilesMismatchError extends PlexusError {
  declare readonly code: 'model-files-mismatch'
  readonly file: string
  constructor (file: string, message: string) { super('model-files-mismatch', message, { httpStatus: 503 }); this.name = 'ModelFilesMismatchError'; this.file = file }
}

const log = componentLog('client', 'fetch')

/** Nothing usable was found or fetched; the message says why (one line). */
export class ModelFetchError extends PlexusError {
  constructor (message: string, options?: ErrorOptions) { super('model-fetch', message, { ...options, httpStatus: 503 }); this.name = 'ModelFetchError' }
}

export interface ResolveModelOptions {
  /** Default: models/ in the cache ($PLEXUS_CACHE_DIR, else ~/.cache/plexus). */
  cacheDir?: string
  /** Told how far fetching the parts is (task `fetch`, bytes received). */
  onProgress?: ProgressListener
  signal?: AbortSignal
  /** Deadline of the DHT lookups. Default 10 s. */
  lookupTimeoutMs?: number
  /** Deadline for asking one server what it serves, and for connecting to a source. Default 5 s. */
  infoTimeoutMs?: number
  /** Deadline for each chunk (a stalled source is dropped). Default 30 s. */
  chunkTimeoutMs?: number
  /** Bytes per read request (≤ 4 MiB). Default 1 MiB. */
  chunkBytes?: number
  /** Read requests in flight per stream; bounds what a fast source can push at us. Default 8. */
  window?: number
}

/**
 * A local model directory holding the client's parts (config, manifest, tokenizer and a
 * model.safetensors with only the head tensors) of the model named by `nameOrId`: a 64-hex id,
 * an id prefix of ≥ 8 hex digits, or the name servers announce. A verified copy in the cache is
 * used as is (for a full id without asking anyone); otherwise the parts are fetched from a peer
 * that offers them, verified against the model id, and installed into `<cacheDir>/<id>/`.
 */
export async function resolveModel (node: PlexusNode, nameOrId: string, opts: ResolveModelOptions = {}): Promise<string> {
  const cacheDir = opts.cacheDir ?? plexusCacheDir('models')
  const wanted = nameOrId.trim()
  if (wanted === '') throw new ModelFetchError('no model given: pass a model name, id or directory')
  if (FULL_ID.test(wanted.toLowerCase())) {
    const dir = await cached(cacheDir, wanted.toLowerCase())
    if (dir != null) return dir
  }
  const found = await findModel(node, wanted, opts)
  const dir = await cached(cacheDir, found.id)
  if (dir != null) return dir
  if (found.sources.length === 0) {
    throw new ModelFetchError(`no peer offers the client parts (embeddings, LM head) of ${found.name} (${shortId(found.id)}): ` +
      `${found.servers} server(s) hold its blocks but none offers the head (servers of a GGUF file never do); pass --model DIR or --model FILE.gguf with a local copy`)
  }
  return await fetchModel(node, found, cacheDir, opts)
}

interface FoundModel { id: string, name: string, servers: number, sources: PeerId[] }

/** Which model `wanted` names, from the signed announcements of the servers found in the DHT. */
async function findModel (node: PlexusNode, wanted: string, opts: ResolveModelOptions): Promise<FoundModel> {
  const lower = wanted.toLowerCase()
  const lookups: Array<Promise<PeerId[]>> = [findServers(node, { timeoutMs: opts.lookupTimeoutMs, signal: opts.signal })]
  // every server provides the models CID, but a lookup stops at k providers: ask block 0's too
  if (FULL_ID.test(lower)) {
    lookups.push(findBlockHolders(node, lower, [0], { perBlockTimeoutMs: opts.lookupTimeoutMs, signal: opts.signal }).then(m => m.get(0) ?? []))
  }
  const peers = new Map<string, PeerId>()
  for (const list of await Promise.all(lookups)) for (const p of list) if (!p.equals(node.peerId)) peers.set(p.toString(), p)
  const anns = (await Promise.all([...peers.values()].map(async peer => {
    try {
      return (await fetchInfo(node, peer, { timeoutMs: opts.infoTimeoutMs, signal: opts.signal })).map(a => ({ peer, a }))
    } catch {
      return [] // gone (stale provider record) or misbehaving: not a source either way
    }
  }))).flat()
  opts.signal?.throwIfAborted()

  const hex = ID_PREFIX.test(lower)
  const ids = new Map<string, { name: string, servers: Set<string>, numBlocks: number }>()
  for (const { peer, a } of anns) {
    if (a.modelName !== wanted && !(hex && a.modelId.startsWith(lower))) continue
    const m = ids.get(a.modelId) ?? { name: a.modelName, servers: new Set(), numBlocks: a.numBlocks }
    m.servers.add(peer.toString())
    ids.set(a.modelId, m)
  }
  if (ids.size === 0) {
    const seen = new Map(anns.map(({ a }) => [a.modelId, `${a.modelName} (${shortId(a.modelId)})`]))
    const what = FULL_ID.test(lower) ? `model ${lower}` : hex ? `a model named or with an id starting "${wanted}"` : `a model named "${wanted}"`
    throw new ModelFetchError(`no server in the swarm announces ${what} (${peers.size === 0 ? 'no servers found: is the swarm reachable?' : `announced: ${[...seen.values()].join(', ')}`})`)
  }
  if (ids.size > 1) {
    const list = [...ids].map(([id, m]) => `${id} "${m.name}" (${m.numBlocks} blocks, ${m.servers.size} server(s))`)
    throw new ModelFetchError(`"${wanted}" names ${ids.size} different models: ${list.join('; ')}; pass one id (or a longer id prefix) as --model`)
  }
  const [id, m] = [...ids][0]
  const sources = new Map<string, PeerId>()
  for (const { peer, a } of anns) if (a.modelId === id && a.offersHead) sources.set(peer.toString(), peer)
  const servers = new Set(anns.filter(({ a }) => a.modelId === id).map(({ peer }) => peer.toString()))
  return { id, name: m.name, servers: servers.size, sources: [...sources.values()] }
}

/** `<cacheDir>/<id>` when it holds a consistent copy; a broken one is removed. */
async function cached (cacheDir: string, id: string): Promise<string | undefined> {
  const dir = join(cacheDir, id)
  if (!(await exists(dir))) return undefined
  try {
    await checkModelDir(dir, id)
    log.info(`using the cached client parts in ${dir}`)
    return dir
  } catch (err) {
    log.info(`cached copy ${dir} is unusable (${(err as Error).message}); fetching it again`)
    await discard(dir)
    return undefined
  }
}

/** Quick check (the head digest is checked when the head loads): manifest, config and id agree. */
async function checkModelDir (dir: string, id: string): Promise<ModelManifest> {
  const m = parseManifest(await readFile(join(dir, MANIFEST_FILE)))
  checkManifest(m, await readModelConfig(dir))
  if (m.id !== id) throw new Error(`${MANIFEST_FILE} describes model ${shortId(m.id)}`)
  if (!(await stat(join(dir, HEAD_FILE))).isFile()) throw new Error(`${HEAD_FILE} is not a file`)
  // the side files are small: a cached copy edited since is caught here, not in a prompt
  for (const name of CLIENT_FILES) {
    const bytes = await readFile(join(dir, name)).catch(() => undefined)
    const digest = m.files?.[name]
    if (bytes == null && digest == null) continue
    if (bytes == null) throw new ModelFilesMismatchError(name, `${name} is missing`)
    if (digest == null) throw new ModelFilesMismatchError(name, `${name} is not covered by the model id`)
    checkFile(name, bytes, digest)
  }
  return m
}

async function fetchModel (node: PlexusNode, found: FoundModel, cacheDir: string, opts: ResolveModelOptions): Promise<string> {
  await mkdir(cacheDir, { recursive: true })
  await sweepPartials(cacheDir)
  const failures: string[] = []
  const errors: Error[] = []
  log.info(`fetching the client parts of ${found.name} (${shortId(found.id)}) from ${found.sources.length} peer(s)`)
  for (const peer of found.sources) {
    const tmp = await mkdtemp(join(cacheDir, `.partial-${shortId(found.id)}-`))
    const t0 = performance.now()
    try {
      const bytes = await fetchFrom(node, peer, found, tmp, opts)
      const dir = await install(tmp, join(cacheDir, found.id))
      log.info(`fetched the client parts of ${found.name} (${shortId(found.id)}) from ${peer}: ` +
        `${(bytes / 2 ** 20).toFixed(1)} MiB in ${Math.round(performance.now() - t0)} ms → ${dir}`)
      return dir
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      if (opts.signal?.aborted === true) throw err
      log.info(`peer ${peer} skipped: ${(err as Error).message}`)
      failures.push(`${peer}: ${(err as Error).message}`)
      errors.push(err as Error)
    }
  }
  throw new ModelFetchError(`no peer gave verified client parts of ${found.name} (${shortId(found.id)}): ${failures.join('; ')}`,
    { cause: errors.length === 1 ? errors[0] : new AggregateError(errors, 'every peer failed') })
}

/** Fetches and verifies everything from one peer into `tmp`; returns the bytes received. */
async function fetchFrom (node: PlexusNode, peer: PeerId, found: FoundModel, tmp: string, opts: ResolveModelOptions): Promise<number> {
  const id = found.id
  const connect = AbortSignal.timeout(opts.infoTimeoutMs ?? 5000)
  let stream: Stream
  try {
    stream = await node.dialProtocol(peer, MODEL_FILES_PROTOCOL, { signal: opts.signal != null ? AbortSignal.any([opts.signal, connect]) : connect })
  } catch (err) {
    throw new Error(`cannot open ${MODEL_FILES_PROTOCOL}: ${(err as Error).message}`, { cause: err })
  }
  const c = new FilesClient(stream, id, opts)
  let m: ModelManifest
  let received: number
  try {
    const list = await c.list()
    const wanted = new Set([MANIFEST_FILE, 'config.json', ...CLIENT_FILES])
    const total = list.files.filter(f => wanted.has(f.name)).reduce((n, f) => n + f.size, 0) + list.tensors.reduce((n, t) => n + t.size, 0)
    c.meter = new ProgressMeter(opts.onProgress, { task: 'fetch', model: found.name, total })
    const size = (name: string): number => {
      const f = list.files.find(f => f.name === name)
      if (f == null) throw new Error(`does not offer ${name}`)
      if (f.size > FILE_LIMITS[name]) throw new Error(`${name} is ${f.size} bytes, over the ${FILE_LIMITS[name]}-byte limit`)
      return f.size
    }
    m = parseManifest(await c.readAll('file', MANIFEST_FILE, size(MANIFEST_FILE)))
    const configBytes = await c.readAll('file', 'config.json', size('config.json'))
    const cfg = parseModelConfig(parseJson('config.json', configBytes), 'config.json')
    checkManifest(m, cfg)
    if (m.id !== id) throw new Error(`its manifest describes model ${shortId(m.id)}, not ${shortId(id)}`)
    if (m.files?.[GGUF_TOKENIZER_KEY] != null) throw new Error('offers the parts of a GGUF model, which come only with the file itself')
    await writeFile(join(tmp, 'config.json'), configBytes)

    // head tensors: exactly the config's, in its order, written as one safetensors file
    const expected = [...headTensorShapes(cfg)]
    const tensors = list.tensors
    if (tensors.length !== expected.length || tensors.some((t, i) => t.name !== expected[i][0])) {
      throw new Error(`offers head tensors [${tensors.map(t => t.name).join(', ')}], expected [${expected.map(e => e[0]).join(', ')}]`)
    }
    for (const [i, t] of tensors.entries()) {
      if (!(t.dtype in DTYPE_BYTES)) throw new Error(`${t.name}: unsupported dtype ${JSON.stringify(t.dtype)}`)
      const bytes = expected[i][1].reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype]
      if (JSON.stringify(t.shape) !== JSON.stringify(expected[i][1]) || t.size !== bytes) {
        throw new Error(`${t.name}: ${t.dtype}${JSON.stringify(t.shape)} (${t.size} bytes) does not fit the config's ${JSON.stringify(expected[i][1])}`)
      }
    }
    const fh = await open(join(tmp, HEAD_FILE), 'w')
    try {
      const header = safetensorsHeader(tensors)
      await fh.write(header, 0, header.length, 0)
      let pos = header.length
      for (const t of tensors) {
        await c.read('tensor', t.name, t.size, async (chunk) => { await fh.write(chunk, 0, chunk.length, pos); pos += chunk.length }, t)
      }
    } finally {
      await fh.close()
    }
    // exactly the side files the id covers, each checked before it is written anywhere
    for (const [name, digest] of Object.entries(m.files ?? {})) {
      const bytes = await c.readAll('file', name, size(name))
      checkFile(name, bytes, digest)
      if (name.endsWith('.json')) parseJson(name, bytes)
      await writeFile(join(tmp, name), bytes)
    }
    received = c.received
    c.meter.finish()
  } finally {
    // done with the peer before the (slow, for big heads) checks
    await c.close()
  }

  const ckpt = await Checkpoint.open(tmp)
  let digest: string
  try { digest = await tensorsDigest(await ckpt.readHeadRaw()) } finally { await ckpt.close() }
  if (digest !== m.headDigest) throw new Error(`head tensors do not match the model id (digest ${digest.slice(0, 12)}, manifest says ${m.headDigest.slice(0, 12)})`)
  await loadTokenizer(tmp)
  await writeFile(join(tmp, MANIFEST_FILE), JSON.stringify(m, null, 2) + '\n')
  await checkModelDir(tmp, id)
  return received
}

function checkFile (name: string, bytes: Uint8Array, digest: string): void {
  const got = fileDigest(bytes)
  if (got !== digest) throw new ModelFilesMismatchError(name, `${name} does not match the model id (digest ${got.slice(0, 12)}, manifest says ${digest.slice(0, 12)})`)
}

/** The manifest's known fields only (its name is shown to users: keep it short and a string). */
function parseManifest (bytes: Uint8Array): ModelManifest {
  const m = parseJson(MANIFEST_FILE, bytes) as ModelManifest
  const hex = (s: unknown): boolean => typeof s === 'string' && FULL_ID.test(s)
  if (m == null || typeof m !== 'object' || typeof m.name !== 'string' || m.name.length > 200 || !hex(m.id) || !hex(m.headDigest) ||
    !hex(m.configDigest) || !Array.isArray(m.blockDigests) || !m.blockDigests.every(hex)) {
    throw new Error(`${MANIFEST_FILE} is malformed`)
  }
  if (m.files != null && (typeof m.files !== 'object' || Array.isArray(m.files))) throw new Error(`${MANIFEST_FILE} is malformed`)
  return {
    format: m.format, name: m.name, id: m.id, configDigest: m.configDigest, headDigest: m.headDigest, blockDigests: m.blockDigests,
    ...(m.files != null ? { files: m.files } : {}), ...(m.quantize != null ? { quantize: m.quantize } : {})
  }
}

/** Moves `tmp` into place; if another process got there first, keeps its copy when it checks out. */
async function install (tmp: string, dir: string): Promise<string> {
  try {
    await rename(tmp, dir)
    return dir
  } catch (err: any) {
    if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err
  }
  await rm(tmp, { recursive: true, force: true })
  await checkModelDir(dir, dir.slice(-64))
  return dir
}

async function discard (dir: string): Promise<void> {
  // rename first, so a half-removed directory never looks like a cached copy
  const aside = `${dir}.stale-${process.pid}-${Date.now()}`
  await rename(dir, aside).then(async () => { await rm(aside, { recursive: true, force: true }) }, async () => { await rm(dir, { recursive: true, force: true }) })
}

/** Removes what crashed fetches left behind (a day old: a slow fetch may still be running). */
async function sweepPartials (cacheDir: string): Promise<void> {
  for (const name of await readdir(cacheDir).catch(() => [] as string[])) {
    if (!name.startsWith('.partial-') && !name.includes('.stale-')) continue
    const st = await stat(join(cacheDir, name)).catch(() => undefined)
    if (st != null && Date.now() - st.mtimeMs > 24 * 3600_000) await rm(join(cacheDir, name), { recursive: true, force: true })
  }
}

async function exists (path: string): Promise<boolean> {
  try { await stat(path); return true } catch { return false }
}
