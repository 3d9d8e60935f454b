// A client with no checkpoint of its own fetches the model's client parts from the swarm's peers,
// verifies them against the model id, caches them, and refuses a peer that serves altered weights.
import assert from 'node:assert/strict'
import { chmod, cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { Announcer, createPlexusNode, dialBootstrap, findBlockHolders, findServers, serveInfo, signAnnouncement, waitForDhtPeers, PROTOCOL_PREFIX } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { Checkpoint, ModelHead, SafetensorsFile, initBackend, loadManifest } from '@plexus/runtime'
import type { ModelManifest } from '@plexus/runtime'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from '../scripts/lib/local-swarm.ts'
import { connectSwarm } from '@plexus/client'
import { resolveModel, MODEL_FILES_PROTOCOL as CLIENT_PROTOCOL } from '@plexus/client'
import { serveModelFiles, MODEL_FILES_PROTOCOL } from '@plexus/server'
import { fixtureDir, golden, runCli, CLIENT_BIN } from './support/fixtures.ts'
import { captureLog } from './support/log-capture.ts'

const g = golden('tiny-llama')

/**
 * Waits until a DHT lookup from `client` finds each of `peers` as a holder of `block` (or as a
 * server, without one): a node reports "ready" after its first provide round even when that
 * reached nobody yet (it retries), and a record kept only by a node that stopped is gone.
 */
async function untilFindable (client: PlexusNode, peers: string[], modelId: string, block?: number): Promise<void> {
  for (const until = Date.now() + 20_000; ;) {
    const found = block == null
      ? await findServers(client, { timeoutMs: 2000 })
      : (await findBlockHolders(client, modelId, [block], { perBlockTimeoutMs: 2000 })).get(block) ?? []
    const missing = peers.filter(p => !found.some(f => f.toString() === p))
    if (missing.length === 0) return
    assert.ok(Date.now() < until, `${missing.join(', ')} not findable within 20 s`)
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

/** A writable copy of a fixture model (nothing is ever written into test/fixtures). */
async function copyModel (from: string, to: string): Promise<void> {
  await cp(from, to, { recursive: true })
  await chmod(to, 0o755)
  for (const f of await readdir(to)) await chmod(join(to, f), 0o644)
}

async function generate (bootstrap: string, model: string, cacheDir: string): Promise<{ code: number, out: any, stderr: string, ms: number }> {
  const t0 = performance.now()
  const r = await runCli(CLIENT_BIN, ['generate', '--bootstrap', bootstrap, '--model', model, '--cache-dir', cacheDir,
    '--token-ids', g.prompt_ids.join(','), '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'])
  let out: any
  try { out = JSON.parse(r.stdout) } catch {}
  return { code: r.code, out, stderr: r.stderr, ms: performance.now() - t0 }
}

/** An in-process peer that announces blocks [1, 2) of the model, offers its head, and serves `dir` (maybe tampered). */
async function startFilesPeer (bootstrap: string, dir: string, manifest: ModelManifest): Promise<{ node: PlexusNode, stop: () => Promise<void> }> {
  const privateKey = await generateKeyPair('Ed25519')
  const node = await createPlexusNode({ privateKey, dhtMode: 'server' })
  await dialBootstrap(node, [bootstrap])
  await waitForDhtPeers(node, { signal: AbortSignal.timeout(10_000) })
  const checkpoint = await Checkpoint.open(dir)
  const unserve = await serveModelFiles({ node, checkpoint, manifest })
  const uninfo = await serveInfo(node, async () => [await signAnnouncement(privateKey, {
    modelId: manifest.id,
    modelName: manifest.name,
    start: 1,
    end: 2,
    numBlocks: manifest.blockDigests.length,
    throughput: 1e6,
    addrs: node.getMultiaddrs().map(String),
    offersHead: true,
    capacity: { sessions: 8, freeSessions: 8 },
    version: '0.1.0'
  }, { ttlMs: 60_000 })])
  const announcer = new Announcer({ node }, { modelId: manifest.id, start: 1, end: 2 })
  const round = await announcer.start()
  assert.ok(round.provided > 0, 'the fake peer is findable')
  return {
    node,
    stop: async () => {
      await announcer.stop()
      await unserve()
      await uninfo()
      await node.stop()
      await checkpoint.close()
    }
  }
}

describe('fetching the client parts of a model from the swarm', function () {
  this.timeout(240_000)
  let tmp: string
  let model: string
  let swarm: LocalSwarm
  let client: PlexusNode
  let manifest: ModelManifest
  let fake: Awaited<ReturnType<typeof startFilesPeer>> | undefined
  let headNode: NodeProcess | undefined

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'plexus-fetch-'))
    model = join(tmp, 'tiny-llama')
    await copyModel(fixtureDir('tiny-llama'), model)
    const ckpt = await Checkpoint.open(model)
    manifest = await loadManifest(ckpt, { write: false })
    await ckpt.close()
    // nobody offers the head until a test adds a node that does
    swarm = await startSwarm(model, ['0:1', '1:2', '2:3'], ['--no-offer-head'])
    client = await connectSwarm([swarm.bootstrapAddr])
    await untilFindable(client, swarm.nodes.map(n => n.peerId), manifest.id)
  })

  after(async () => {
    await fake?.stop()
    await client?.stop()
    await swarm?.stop()
    await rm(tmp, { recursive: true, force: true })
  })

  it('client and server agree on the protocol id', () => {
    assert.equal(MODEL_FILES_PROTOCOL, `${PROTOCOL_PREFIX}/model/1.0.0`)
    assert.equal(CLIENT_PROTOCOL, MODEL_FILES_PROTOCOL)
  })

  it('names an unknown model clearly', async () => {
    const r = await generate(swarm.bootstrapAddr, 'no-such-model', join(tmp, 'cache-unknown'))
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, /^plexus-client: no server in the swarm announces a model named "no-such-model" \(announced: tiny-llama \(28e4da1d7f5b\)\)\n$/m)
  })

  it('says so when no peer offers the head', async () => {
    await assert.rejects(resolveModel(client, 'tiny-llama', { cacheDir: join(tmp, 'cache-none') }),
      /no peer offers the client parts \(embeddings, LM head\) of tiny-llama \(28e4da1d7f5b\): 3 server\(s\) hold its blocks but none offers the head/)
  })

  it('refuses a peer whose LM head was altered', async () => {
    const bad = join(tmp, 'tampered')
    await copyModel(model, bad)
    const file = join(bad, 'model.safetensors')
    const st = await SafetensorsFile.open(file)
    const e = st.tensors.get('lm_head.weight')!
    await st.close()
    const bytes = await readFile(file)
    for (let i = e.begin; i < e.end; i += 997) bytes[i] ^= 0x40
    await writeFile(file, bytes)
    fake = await startFilesPeer(swarm.bootstrapAddr, bad, manifest)

    const cacheDir = join(tmp, 'cache-fake')
    const logs: string[] = []
    const stop = captureLog(logs)
    await assert.rejects(resolveModel(client, manifest.id.slice(0, 16), { cacheDir }).finally(stop), (err: Error) => {
      assert.equal(err.name, 'ModelFetchError')
      assert.match(err.message, new RegExp(`no peer gave verified client parts of tiny-llama \\(28e4da1d7f5b\\): ${fake!.node.peerId}: head tensors do not match the model id`))
      return true
    })
    assert.ok(logs.some(l => l.includes(`peer ${fake!.node.peerId} skipped`)), logs.join('\n'))
    assert.deepEqual(await readdir(cacheDir), [], 'nothing unverified is left in the cache')
  })

  it('answers bad requests with one clear error, and serves nothing outside the whitelist', async () => {
    const ask = async (req: unknown): Promise<any> => {
      const s = await client.dialProtocol(fake!.node.peerId, MODEL_FILES_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      const io = lpStream(s, { maxDataLength: 4 << 20 })
      await io.write(new TextEncoder().encode(typeof req === 'string' ? req : JSON.stringify(req)))
      const r = JSON.parse(new TextDecoder().decode((await io.read({ signal: AbortSignal.timeout(5000) })).subarray()))
      await s.close()
      return r
    }
    const read = { op: 'read', modelId: manifest.id, kind: 'file', offset: 0, length: 16 }
    for (const bad of [{ name: '../../../etc/passwd' }, { name: 'model.safetensors' }, { name: '/etc/passwd' },
      { kind: 'tensor', name: 'model.layers.0.mlp.up_proj.weight' }, { length: (4 << 20) + 1, name: 'config.json' }, { name: 'config.json', extra: 1 }]) {
      assert.match((await ask({ ...read, ...bad })).error, /^bad request: does not match schema "model-file-request" at \/(name|length): |additional properties "extra"/, JSON.stringify(bad))
    }
    assert.equal((await ask('not json')).error, 'request is not JSON')
    assert.equal((await ask({ ...read, modelId: 'ab'.repeat(32), name: 'config.json' })).error, `model ${'ab'.repeat(32)} is not served here`)
    assert.equal((await ask({ ...read, name: 'tokenizer.json' })).error, 'tokenizer.json is not offered for this model')
    assert.equal((await ask({ ...read, name: 'config.json', offset: 10_000 })).error, 'range [10000, 10016) is outside config.json (536 bytes)')
    assert.deepEqual(await ask({ ...read, name: 'config.json' }), { name: 'config.json', offset: 0, length: 16, size: 536 })
    const list = await ask({ op: 'list', modelId: manifest.id })
    assert.deepEqual(list.files.map((f: any) => f.name), ['config.json', 'generation_config.json', 'plexus-manifest.json'])
    assert.deepEqual(list.tensors.map((t: any) => [t.name, t.dtype, t.shape, t.size]), [
      ['model.embed_tokens.weight', 'F32', [512, 64], 131072], ['model.norm.weight', 'F32', [64], 256], ['lm_head.weight', 'F32', [512, 64], 131072]])
  })

  it('takes the parts from an honest peer, skipping the altered one', async () => {
    headNode = await swarm.add('head[1:2]', model, '1:2', ['--offer-head'])
    await untilFindable(client, [headNode.peerId], manifest.id)
    const cacheDir = join(tmp, 'cache-honest')
    const logs: string[] = []
    const stop = captureLog(logs)
    // small odd-sized chunks, few in flight: many pipelined reads per tensor
    const dir = await resolveModel(client, 'tiny-llama', { cacheDir, chunkBytes: 10_000, window: 3 }).finally(stop)
    assert.equal(dir, join(cacheDir, manifest.id))
    assert.ok(logs.some(l => l.startsWith(`fetched the client parts of tiny-llama (28e4da1d7f5b) from ${headNode!.peerId}`)), logs.join('\n'))
    assert.ok(logs.every(l => !l.includes('skipped') || l.includes(`peer ${fake!.node.peerId} skipped: head tensors do not match`)), logs.join('\n'))
    assert.deepEqual((await readdir(cacheDir)).sort(), [manifest.id])
    assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'plexus-manifest.json'])

    // a model dir the client loads, holding exactly the honest head
    await initBackend('cpu')
    const ckpt = await Checkpoint.open(dir)
    const orig = await Checkpoint.open(model)
    try {
      assert.deepEqual(await loadManifest(ckpt, { write: false }), manifest)
      const head = await ModelHead.load(ckpt, { headDigest: manifest.headDigest })
      head.dispose()
      assert.deepEqual((await ckpt.readRaw('lm_head.weight')).bytes, (await orig.readRaw('lm_head.weight')).bytes)
    } finally {
      await orig.close()
      await ckpt.close()
    }

    // the cache is used from then on, without asking anyone for a full id
    const again: string[] = []
    const stopAgain = captureLog(again)
    assert.equal(await resolveModel(client, manifest.id, { cacheDir }).finally(stopAgain), dir)
    assert.deepEqual(again, [`using the cached client parts in ${dir}`])
  })

  it('fetches a tied-embeddings model and a sharded bf16 one as well', async () => {
    for (const name of ['tiny-qwen2-tied-bf16', 'tiny-llama3-sharded-bf16']) {
      const dir = join(tmp, name)
      await copyModel(fixtureDir(name), dir)
      const ckpt = await Checkpoint.open(dir)
      const m = await loadManifest(ckpt, { write: false })
      await ckpt.close()
      const peer = await startFilesPeer(swarm.bootstrapAddr, dir, m)
      try {
        const got = await resolveModel(client, m.id.slice(0, 8), { cacheDir: join(tmp, 'cache-more') })
        const c = await Checkpoint.open(got)
        try {
          assert.deepEqual(await loadManifest(c, { write: false }), m)
          ;(await ModelHead.load(c, { headDigest: m.headDigest })).dispose()
          assert.equal(c.has('lm_head.weight'), name !== 'tiny-qwen2-tied-bf16')
        } finally { await c.close() }
      } finally { await peer.stop() }
    }
  })

  it('several models under one name: a clear error listing their ids', async () => {
    const dir = join(tmp, 'same-name')
    await copyModel(fixtureDir('tiny-qwen2-tied-bf16'), dir)
    const ckpt = await Checkpoint.open(dir)
    const other = { ...await loadManifest(ckpt, { write: false }), name: 'tiny-llama' } // names are not part of the id
    await ckpt.close()
    const peer = await startFilesPeer(swarm.bootstrapAddr, dir, other)
    try {
      await assert.rejects(resolveModel(client, 'tiny-llama', { cacheDir: join(tmp, 'cache-same-name') }), (err: Error) => {
        assert.equal(err.name, 'ModelFetchError')
        assert.match(err.message, /^"tiny-llama" names 2 different models: /)
        assert.ok(err.message.includes(`${manifest.id} "tiny-llama" (3 blocks, `) && err.message.includes(`${other.id} "tiny-llama" (4 blocks, 1 server(s))`), err.message)
        assert.match(err.message, /; pass one id \(or a longer id prefix\) as --model$/)
        return true
      })
      // the id still picks one
      assert.equal(await resolveModel(client, other.id.slice(0, 12), { cacheDir: join(tmp, 'cache-same-name') }), join(tmp, 'cache-same-name', other.id))
    } finally { await peer.stop() }
  })

  it('(stops the altered peer)', async () => {
    // the CLI runs below must not route through it (it serves no blocks)
    await fake?.stop()
    fake = undefined
  })

  describe('plexus-client generate --model NAME|ID', () => {
    let cacheDir: string
    before(() => { cacheDir = join(tmp, 'cache-cli') })

    it('by name: fetches the parts and reproduces the golden greedy tokens', async () => {
      const r = await generate(swarm.bootstrapAddr, 'tiny-llama', cacheDir)
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, g.greedy_new_ids)
      assert.equal(r.out.model_id, manifest.id)
      assert.match(r.stderr, /\[plexus\] fetched the client parts of tiny-llama \(28e4da1d7f5b\) from 12D3KooW\w+: 0\.\d MiB in \d+ ms/)
    })

    it('by id prefix: uses the cache', async () => {
      const r = await generate(swarm.bootstrapAddr, manifest.id.slice(0, 10), cacheDir)
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.out.token_ids, g.greedy_new_ids)
      assert.match(r.stderr, /using the cached client parts/)
      assert.doesNotMatch(r.stderr, /\[plexus\] fetch/)
    })

    it('with no head-offering peer left: works from the cache, by id and by name', async () => {
      await headNode!.stop()
      swarm.nodes.splice(swarm.nodes.indexOf(headNode!), 1)
      // block 1's other holder must be findable without the stopped node's help
      await untilFindable(client, swarm.nodes.filter(n => n.ready.start === 1).map(n => n.peerId), manifest.id, 1)
      for (const m of [manifest.id, 'tiny-llama']) {
        const r = await generate(swarm.bootstrapAddr, m, cacheDir)
        assert.equal(r.code, 0, r.stderr)
        assert.deepEqual(r.out.token_ids, g.greedy_new_ids)
        assert.match(r.stderr, /using the cached client parts/)
      }
    })

    it('a fresh cache with no head-offering peer fails clearly', async () => {
      const r = await generate(swarm.bootstrapAddr, 'tiny-llama', join(tmp, 'cache-empty'))
      assert.equal(r.code, 2)
      assert.match(r.stderr, /^plexus-client: no peer offers the client parts \(embeddings, LM head\) of tiny-llama \(28e4da1d7f5b\)/m)
    })
  })
})
