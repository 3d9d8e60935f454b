// A node's throughput figure: measured at start, or read from the cache and labelled with its age.
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, loadSpanRunners, chainRunners, openModel } from '@plexus/runtime'
import type { SpanRunner } from '@plexus/runtime'
import { cachedThroughput, describeThroughput, THROUGHPUT_MAX_AGE_MS } from '../src/throughput.ts'
import { fixtureDir } from '../../../test/support/fixtures.ts'

describe('throughput: measured, or cached with its age', function () {
  this.timeout(60_000)
  let dir: string
  let runner: SpanRunner
  let ckpt: Awaited<ReturnType<typeof openModel>>
  const opts = (): { modelId: string, backend: string, cacheDir: string } => ({ modelId: 'm', backend: 'wasm', cacheDir: dir })

  before(async () => {
    await initBackend('wasm')
    dir = await mkdtemp(join(tmpdir(), 'plexus-throughput-'))
    ckpt = await openModel(fixtureDir('tiny-llama'))
    runner = chainRunners(await loadSpanRunners(ckpt, 0, ckpt.config.numLayers))
  })
  after(async () => {
    await runner?.dispose()
    await ckpt?.close()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('measures once, then reads the cache and says how old the figure is', async () => {
    const first = await cachedThroughput(runner, 64, opts())
    assert.equal(first.cached, false)
    assert.ok(first.tokensPerSecond > 0)
    assert.equal(describeThroughput(first), 'measured now')
    const again = await cachedThroughput(runner, 64, opts())
    assert.equal(again.cached, true)
    assert.equal(again.tokensPerSecond, first.tokensPerSecond)
    assert.equal(again.measuredAt, first.measuredAt)
    assert.match(describeThroughput(again, first.measuredAt + 3 * 3600_000), /^measured 3 h ago \(cached/)
    const forced = await cachedThroughput(runner, 64, { ...opts(), remeasure: true })
    assert.equal(forced.cached, false)
    assert.ok(forced.measuredAt >= first.measuredAt)
  })

  it('measures again when the cached figure is stale or has no date (an older version wrote it)', async () => {
    const file = join(dir, 'throughput.json')
    const table = JSON.parse(await readFile(file, 'utf8'))
    const [key] = Object.keys(table)
    await writeFile(file, JSON.stringify({ [key]: { tokensPerSecond: 1e9, measuredAt: Date.now() - THROUGHPUT_MAX_AGE_MS - 1 } }))
    const stale = await cachedThroughput(runner, 64, opts())
    assert.equal(stale.cached, false)
    assert.notEqual(stale.tokensPerSecond, 1e9)
    await writeFile(file, JSON.stringify({ [key]: 1e9 }))
    const legacy = await cachedThroughput(runner, 64, opts())
    assert.equal(legacy.cached, false)
    assert.notEqual(legacy.tokensPerSecond, 1e9)
  })
})
