// The swarm dashboard in a real browser (headless Chromium): a node's page (--dashboard-port) and
// the gateway's page at / show every block and server of a 3-node swarm, their tokens/s moves
// while generations run, the gateway lists the routes they took, and a phone-sized window needs
// no sideways scrolling. Screenshots go to tmp/test-output/dashboard/ (PLEXUS_TEST_OUTPUT).
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'node:http'
import puppeteer from 'puppeteer-core'
import type { Browser, Page } from 'puppeteer-core'
import { initBackend } from '@plexus/runtime'
import { createGateway } from '@plexus/gateway'
import type { Gateway } from '@plexus/gateway'
import { openGatewayCatalog } from '@plexus/client'
import type { GatewayCatalog } from '@plexus/client'
import { gatewayDashboard } from '@plexus/client'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Announcer, DEFAULT_MAX_WATCHERS, createPlexusNode, dialBootstrap, putReputation, signReputation } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { ROOT } from './support/fixtures.ts'

// page.evaluate bodies run in the browser; the project's TypeScript lib has no DOM types
declare const document: any
declare const window: any

const CHROMIUM = process.env.PLEXUS_CHROMIUM ?? '/usr/bin/chromium'
const OUT = process.env.PLEXUS_TEST_OUTPUT != null ? join(process.env.PLEXUS_TEST_OUTPUT, 'dashboard') : join(ROOT, 'tmp', 'test-output', 'dashboard')

/** What the page shows: the coverage map's held cells and counts, tokens/s, routes. */
async function shown (page: Page): Promise<{ held: Array<[string, number]>, counts: number[], tps: number, routes: string[] }> {
  return await page.evaluate(() => {
    const cells = [...document.querySelectorAll('svg.coverage rect.cell.held')]
    return {
      held: cells.map(c => [c.getAttribute('data-peer') ?? '', Number(c.getAttribute('data-block'))] as [string, number]),
      counts: [...document.querySelectorAll('svg.coverage text.count')].map(t => Number(t.textContent)),
      tps: Number((document.getElementById('tps')?.textContent ?? '').replace(/[^\d.]/g, '')),
      routes: [...document.querySelectorAll('#routes li.route')].map(li => li.textContent ?? '')
    }
  })
}

const SPANS = ['0:3', '3:6', '6:8']
const BLOCKS = 8
/** Blocks [start, end) as the page writes them. */
const shownBlocks = (start: number, end: number): string => end - start === 1 ? `${start}` : `${start}–${end - 1}`
const range = (start: number, end: number): number[] => Array.from({ length: end - start }, (_, i) => start + i)

/** One request by node:http (which, unlike fetch, may set Host); resolves at the response's head. */
async function head (url: string, opts: { method?: string, host?: string } = {}): Promise<{ status: number, type: string, close: () => void }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.host != null ? { host: opts.host } : {} }, (res) => {
      resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), close: () => { req.destroy() } })
    })
    req.once('error', reject)
    req.end()
  })
}

async function until<T> (what: string, probe: () => Promise<T>, done: (v: T) => boolean, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (done(v)) return v
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs / 1000} s; last seen ${JSON.stringify(v)}`)
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

describe('swarm dashboard in a browser', function () {
  this.timeout(240_000)
  let dir: string
  let swarm: LocalSwarm | undefined
  let models: GatewayCatalog | undefined
  let gw: Gateway | undefined
  let gatewayUrl: string
  let browser: Browser | undefined
  let verifier: { node: PlexusNode, announcer: Announcer } | undefined
  /** What the verifier published about each server: [passed, failed] by peer id. */
  const checks = new Map<string, [number, number]>()

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`the dashboard test needs Chromium at ${CHROMIUM} (Debian: apt-get install chromium; or set PLEXUS_CHROMIUM to its path)`)
    }
    await initBackend('auto')
    await mkdir(OUT, { recursive: true })
    dir = await mkdtemp(join(tmpdir(), 'plexus-dashboard-'))
    await makeModel({ shape: 'tiny', layers: 8, out: join(dir, 'tiny'), seed: 7, name: 'tiny' })
    swarm = await startSwarm(join(dir, 'tiny'), SPANS, ['--dashboard-port', '0'])
    verifier = await publishReputation(swarm)
    models = await openGatewayCatalog({ local: false, bootstrap: [swarm.bootstrapAddr], model: 'tiny', cacheDir: join(dir, 'cache') })
    const board = gatewayDashboard(models)
    gw = await createGateway({ catalog: models.catalog, modelName: models.defaultName, status: models.status, dashboard: board.dashboard })
    board.watch(gw.metrics)
    gatewayUrl = await gw.listen(0)
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  })

  after(async () => {
    await browser?.close()
    await gw?.close()
    await models?.close()
    await verifier?.announcer.stop()
    await verifier?.node.stop()
    await swarm?.stop()
    if (dir != null) await rm(dir, { recursive: true, force: true })
  })

  /**
   * A verifier as the DHT knows one: provides the model's verifiers key and publishes a signed
   * reputation record about each server (here without running checks: the records are what the
   * dashboard reads).
   */
  async function publishReputation (swarm: LocalSwarm): Promise<{ node: PlexusNode, announcer: Announcer }> {
    const key = await generateKeyPair('Ed25519')
    const node = await createPlexusNode({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], dhtMode: 'server' })
    await dialBootstrap(node, [swarm.bootstrapAddr])
    const { modelId, numBlocks } = swarm.nodes[0].ready
    const announcer = new Announcer({ node }, { modelId, start: 0, end: numBlocks, role: 'verifier' })
    await announcer.start()
    for (const [i, n] of swarm.nodes.entries()) {
      const [passed, failed] = [10 + i, i === 2 ? 1 : 0]
      checks.set(n.peerId, [passed, failed])
      const stored = await putReputation(node, await signReputation(key, { subject: n.peerId, modelId, passed, failed, reports: [], seq: 1 }))
      assert.ok(stored > 0, `the reputation record of ${n.name} reached no DHT peer`)
    }
    return { node, announcer }
  }

  /** Runs completions through the gateway, one after another, until `stop` settles; the tokens of those completed. */
  async function generateUntil (stop: Promise<unknown>): Promise<number> {
    const halt = new AbortController()
    stop.finally(() => { halt.abort() }).catch(() => {})
    let tokens = 0
    while (!halt.signal.aborted) {
      let status: number
      let body: any
      try {
        const r = await fetch(`${gatewayUrl}/v1/completions`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, signal: halt.signal,
          body: JSON.stringify({ model: 'tiny', prompt: [1, 17, 250, 33], max_tokens: 200, temperature: 0 })
        })
        status = r.status
        body = await r.json()
      } catch (err) {
        if (halt.signal.aborted) break
        throw err
      }
      assert.equal(status, 200, JSON.stringify(body))
      tokens += body.usage.completion_tokens
    }
    return tokens
  }

  it("a node's page shows every block and server, and its tokens/s rises while a generation runs", async () => {
    const first = swarm!.nodes.find(n => n.ready.start === 0)!
    assert.ok(first.ready.dashboardPort > 0, `the ready event names the dashboard port: ${JSON.stringify(first.ready)}`)
    const page = await browser!.newPage()
    await page.setViewport({ width: 1100, height: 900 })
    const errors: string[] = []
    page.on('pageerror', (e) => { errors.push(String(e)) })
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()) })
    await page.goto(`http://127.0.0.1:${first.ready.dashboardPort}/`)
    const peers = new Set(swarm!.nodes.map(n => n.peerId))
    const all = await until(`the coverage map showing ${BLOCKS} blocks × 3 servers`, async () => await shown(page),
      s => s.counts.length === BLOCKS && new Set(s.held.map(([p]) => p)).size === 3)
    assert.deepEqual(new Set(all.held.map(([p]) => p)), peers)
    for (const n of swarm!.nodes) {
      assert.deepEqual(all.held.filter(([p]) => p === n.peerId).map(([, b]) => b), range(n.ready.start, n.ready.end), `${n.name}'s row`)
    }
    assert.deepEqual(all.counts, new Array(BLOCKS).fill(1))
    const idle = await until('tokens/s at 0 before any generation', async () => await shown(page), s => s.tps === 0)
    assert.equal(idle.tps, 0)

    const busy = until("the node's tokens/s above 0", async () => await shown(page), s => s.tps > 0)
    // the page's figure moves while a request is still generating: requests are cut off then
    const [seen] = await Promise.all([busy, generateUntil(busy)])
    assert.ok(seen.tps > 0)
    const sessions = await page.$$eval('#routes li.route', lis => lis.length)
    assert.ok(sessions > 0, 'the node lists the sessions that went through it')
    await page.screenshot({ path: join(OUT, 'node.png'), fullPage: true })
    assert.deepEqual(errors, [], 'no script errors on the page')
    await page.close()
  })

  it("a node's dashboard is read-only, answers only to localhost and holds at most 16 live pages", async () => {
    const base = `http://127.0.0.1:${swarm!.nodes[0].ready.dashboardPort}`
    assert.equal((await head(`${base}/`, { method: 'POST' })).status, 405)
    assert.equal((await head(`${base}/`, { host: 'evil.example:80' })).status, 403, 'a Host naming another machine (DNS rebinding) is refused')
    assert.equal((await head(`${base}/nothing-here`)).status, 404)
    const streams = []
    try {
      for (let i = 0; i < DEFAULT_MAX_WATCHERS; i++) {
        // the page the test before closed may hold its slot until the node sees its stream end
        const r = await until(`live page ${i + 1}`, async () => {
          const r = await head(`${base}/dashboard/events`)
          if (r.status !== 200) r.close()
          return r
        }, r => r.status === 200, 10_000)
        streams.push(r)
        assert.equal(r.status, 200)
        assert.match(r.type, /^text\/event-stream/)
      }
      const refused = await head(`${base}/dashboard/events`)
      refused.close()
      assert.equal(refused.status, 503, `the ${DEFAULT_MAX_WATCHERS + 1}th live page is refused`)
    } finally {
      for (const r of streams) r.close()
    }
    // the node still serves its page once they are gone
    const again = await until('a stream slot again', async () => { const r = await head(`${base}/dashboard/events`); r.close(); return r.status }, s => s === 200, 10_000)
    assert.equal(again, 200)
  })

  it("the gateway's page at / shows the swarm, its tokens/s while generating, the routes taken, and fits a phone", async () => {
    const page = await browser!.newPage()
    await page.setViewport({ width: 1100, height: 900 })
    const errors: string[] = []
    page.on('pageerror', (e) => { errors.push(String(e)) })
    await page.goto(`${gatewayUrl}/`)
    const all = await until(`the coverage map showing ${BLOCKS} blocks × 3 servers`, async () => await shown(page),
      s => s.counts.length === BLOCKS && new Set(s.held.map(([p]) => p)).size === 3)
    assert.deepEqual(new Set(all.held.map(([p]) => p)), new Set(swarm!.nodes.map(n => n.peerId)))
    assert.deepEqual(all.counts, new Array(BLOCKS).fill(1))
    // latency and backend come from pings and announcements
    const rows = await page.$$eval('table.servers tbody tr', trs => trs.map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent ?? '')))
    assert.equal(rows.length, 3)
    for (const r of rows) {
      assert.match(r[2], /wasm|cpu|tensorflow|webgpu/, `backend column: ${r.join(' | ')}`)
      assert.match(r[5], /^\d[\d,]* ms$/, `latency column: ${r.join(' | ')}`)
    }
    const reputations = await until('the verifier\'s records in the reputation column', async () =>
      await page.$$eval('table.servers tbody tr', trs => trs.map(tr => [tr.getAttribute('data-peer') ?? '', tr.querySelectorAll('td')[7]?.textContent ?? ''])),
    rows => rows.length === 3 && rows.every(([, text]) => text.includes('✓')), 30_000)
    for (const [peer, text] of reputations) {
      const [passed, failed] = checks.get(peer) ?? []
      assert.equal(text, `${passed} ✓ ${failed} ✗`, `reputation of ${peer.slice(-6)}`)
    }

    const busy = (async () => {
      const seen = await until("the gateway's tokens/s above 0", async () => await shown(page), s => s.tps > 0)
      const routed = await until('a route through the 3 nodes', async () => await shown(page), s => s.routes.length > 0)
      // the picture (the README's): a few seconds into generating
      await new Promise(resolve => setTimeout(resolve, 4000))
      await page.screenshot({ path: join(OUT, 'gateway.png'), fullPage: true })
      return { seen, routed }
    })()
    const [{ seen, routed }] = await Promise.all([busy, generateUntil(busy)])
    assert.ok(seen.tps > 0)
    const order = [...swarm!.nodes].sort((a, b) => a.ready.start - b.ready.start)
    assert.match(routed.routes[0], new RegExp(order.map(n => `${n.peerId.slice(-6)} \\[${shownBlocks(n.ready.start, n.ready.end)}\\]`).join('→…')))

    await page.setViewport({ width: 390, height: 844, isMobile: true, deviceScaleFactor: 2 })
    await page.reload()
    await until('the coverage map on a phone', async () => await shown(page), s => s.counts.length === BLOCKS)
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
    assert.ok(overflow <= 0, `a phone-sized page scrolls sideways by ${overflow} px`)
    await page.screenshot({ path: join(OUT, 'gateway-phone.png'), fullPage: true })
    assert.deepEqual(errors, [], 'no script errors on the page')
    await page.close()
  })
})
