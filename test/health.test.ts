// /health on nodes and on the gateway: ok while every block of the model has a server, 503 naming
// what is missing once a block loses its last server.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, PLEXUS_VERSION } from '@plexus/runtime'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { openGatewayCatalog } from '@plexus/client'
import type { GatewayCatalog } from '@plexus/client'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'

/** Polls `url` until `done(status, body)` holds (bounded). */
async function until (url: string, done: (status: number, body: any) => boolean, timeoutMs = 45_000): Promise<{ status: number, body: any }> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const r = await fetch(url)
    const body = await r.json()
    if (done(r.status, body)) return { status: r.status, body }
    if (Date.now() > end) throw new Error(`${url} never got there: last ${r.status} ${JSON.stringify(body)}`)
    await new Promise(resolve => setTimeout(resolve, 500))
  }
}

describe('/health on nodes and gateway', function () {
  this.timeout(180_000)
  let dir: string
  let swarm: LocalSwarm | undefined
  let models: GatewayCatalog | undefined
  let gw: Gateway | undefined
  let base: string

  before(async () => {
    await initBackend('auto')
    dir = await mkdtemp(join(tmpdir(), 'plexus-health-'))
    await makeModel({ shape: 'tiny', out: join(dir, 'tiny'), seed: 5, name: 'tiny' })
    swarm = await startSwarm(join(dir, 'tiny'), ['0:1', '1:2', '2:3'], ['--metrics-port', '0'])
    models = await openGatewayCatalog({ local: false, bootstrap: [swarm.bootstrapAddr], model: 'tiny', cacheDir: join(dir, 'cache') })
    gw = await createGateway({ catalog: models.catalog, modelName: models.defaultName, status: models.status })
    base = await gw.listen(0)
  })

  after(async () => {
    await gw?.close()
    await models?.close()
    await swarm?.stop()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  it('is ok while every block has a server, and says what each serves', async () => {
    const first = swarm!.nodes.find(n => n.ready.start === 0)!
    const node = await until(`http://127.0.0.1:${first.ready.metricsPort}/health`, (s) => s === 200)
    assert.equal(node.body.status, 'ok')
    assert.equal(node.body.version, PLEXUS_VERSION)
    assert.deepEqual(node.body.serving, { start: 0, end: 1 })
    assert.deepEqual(node.body.coverage, [1, 1, 1])
    assert.ok(node.body.peers > 0)
    const g = await until(`${base}/health`, (s) => s === 200)
    assert.equal(g.body.status, 'ok')
    assert.equal(g.body.mode, 'swarm')
    assert.deepEqual(g.body.models.map((m: any) => [m.name, m.complete, m.loaded]), [['tiny', true, true]])
  })

  it('turns 503 on a node and on the gateway when a block loses its last server', async () => {
    const last = swarm!.nodes.find(n => n.ready.start === 2)!
    await last.stop()
    const first = swarm!.nodes.find(n => n.ready.start === 0)!
    const node = await until(`http://127.0.0.1:${first.ready.metricsPort}/health`, (s) => s === 503)
    assert.equal(node.body.status, 'degraded')
    assert.deepEqual(node.body.unserved, [2])
    const g = await until(`${base}/health`, (s) => s === 503)
    assert.equal(g.body.status, 'degraded')
    assert.deepEqual(g.body.uncovered, ['tiny'])
  })
})
