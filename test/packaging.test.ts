// The packed tarballs (npm run pack), installed together into an empty directory the way a user
// would: their bins run compiled JavaScript (Node refuses to strip types under node_modules), on
// Node 22 as `engines` says, with no react-native in the install, and they generate the golden
// tokens on their own and through a swarm of the installed plexus-node processes.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { ROOT, fixtureDir, golden } from './support/fixtures.ts'
import { startNode, untilDiscoverable } from '../scripts/lib/local-swarm.ts'
import type { NodeProcess } from '../scripts/lib/local-swarm.ts'

const run = promisify(execFile)
const FIXTURE = 'tiny-llama'

/** Runs a command and returns its output and exit code, never throwing. */
async function sh (cmd: string, args: string[], opts: { cwd?: string, timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  try {
    const r = await run(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20, env: opts.env ?? ENV })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err: any) {
    return { code: typeof err.code === 'number' ? err.code : 1, stdout: err.stdout ?? '', stderr: `${err.stderr ?? ''}${typeof err.code === 'number' ? '' : String(err.message)}` }
  }
}

// npm and the bins' `#!/usr/bin/env node` find the Node running this test first on the PATH; what
// `npm run` adds about the repository (its prefix, its package) is left out, so that the installs
// below stay in their own directories.
const ENV: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(npm_(package|lifecycle)_|npm_config_(local_)?prefix$|INIT_CWD$)/i.test(k)))
Object.assign(ENV, { PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`, npm_config_update_notifier: 'false' })

function walk (dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) walk(join(dir, e.name), out)
    else out.push(join(dir, e.name))
  }
  return out
}

describe('packed tarballs installed into an empty directory', function () {
  this.timeout(900_000)
  let work: string
  let app: string
  let tarballs: string[]
  const bin = (name: string): string => join(app, 'node_modules', '.bin', name)
  const g = golden(FIXTURE)
  const tokenArgs = ['--model', fixtureDir(FIXTURE), '--token-ids', g.prompt_ids.join(','), '--max-tokens', '8', '--json', '--backend', 'wasm']

  before(async function () {
    work = mkdtempSync(join(tmpdir(), 'plexus-pack-'))
    const packs = join(work, 'packs')
    const packed = await sh(process.execPath, [join(ROOT, 'scripts', 'pack.ts'), '--out', packs], { timeoutMs: 600_000 })
    assert.equal(packed.code, 0, `npm run pack failed:\n${packed.stderr}\n${packed.stdout}`)
    tarballs = readdirSync(packs).filter(f => f.endsWith('.tgz')).map(f => join(packs, f))
    app = join(work, 'app')
    mkdirSync(app)
    writeFileSync(join(app, 'package.json'), '{ "name": "app", "private": true }\n')
    const installed = await sh('npm', ['install', '--prefix', app, '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], { cwd: app, timeoutMs: 600_000 })
    assert.equal(installed.code, 0, `npm install of the tarballs failed:\n${installed.stderr}`)
  })

  after(() => { if (work != null) rmSync(work, { recursive: true, force: true }) })

  it('packs the six packages and the react-native-webrtc stub', () => {
    const names = tarballs.map(t => t.replace(/^.*\//, '')).sort()
    assert.deepEqual(names, ['plexus-client', 'plexus-gateway', 'plexus-p2p', 'plexus-protocol', 'plexus-runtime', 'plexus-server', 'react-native-webrtc']
      .map(n => n === 'react-native-webrtc' ? `${n}-124.0.6.tgz` : `${n}-0.1.0.tgz`))
  })

  it('installs JavaScript only (no TypeScript sources) and names Node ≥ 22', () => {
    for (const p of ['client', 'gateway', 'p2p', 'protocol', 'runtime', 'server']) {
      const dir = join(app, 'node_modules', '@plexus', p)
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
      assert.equal(pkg.engines?.node, '>=22', `${pkg.name} engines`)
      const ts = walk(dir).filter(f => f.endsWith('.ts') && !f.endsWith('.d.ts'))
      assert.deepEqual(ts, [], `${pkg.name} ships TypeScript sources`)
      for (const [k, v] of Object.entries((pkg.exports ?? {}) as Record<string, any>)) {
        for (const file of typeof v === 'string' ? [v] : [v.types, v.default]) assert.ok(existsSync(join(dir, file)), `${pkg.name}: export "${k}" names ${file}, which is missing`)
      }
      if (pkg.bin != null) assert.ok(existsSync(join(dir, 'dist', 'cli.js')), `${pkg.name} has no dist/cli.js for its bin`)
    }
    // what the code reads beside itself at run time
    assert.ok(existsSync(join(app, 'node_modules/@plexus/runtime/dist/cpu/kernels.wasm')))
    assert.ok(existsSync(join(app, 'node_modules/@plexus/p2p/dist/schemas/session-message.schema.json')))
    assert.ok(existsSync(join(app, 'node_modules/@plexus/p2p/dist/dashboard/assets')), 'the dashboard\'s assets are missing')
    assert.equal(readFileSync(join(app, 'node_modules/@plexus/p2p/dist/bootstrap/peers.txt'), 'utf8'), readFileSync(join(ROOT, 'bootstrap/peers.txt'), 'utf8'))
  })

  it('installs no react-native: the stub stands in for react-native-webrtc', () => {
    assert.ok(!existsSync(join(app, 'node_modules', 'react-native')), 'react-native was installed')
    const rnw = JSON.parse(readFileSync(join(app, 'node_modules', 'react-native-webrtc', 'package.json'), 'utf8'))
    assert.match(rnw.description, /Stands in for react-native-webrtc/)
    assert.ok(existsSync(join(app, 'node_modules', '@libp2p', 'webrtc')), '@libp2p/webrtc missing')
  })

  it('plexus-node and plexus-client print their help', async () => {
    const node = await sh(bin('plexus-node'), ['--help'], { cwd: app })
    assert.equal(node.code, 0, node.stderr)
    assert.match(node.stdout, /plexus-node <command>/)
    assert.match(node.stdout, /join/)
    const client = await sh(bin('plexus-client'), ['--help'], { cwd: app })
    assert.equal(client.code, 0, client.stderr)
    assert.match(client.stdout, /plexus-client <command>/)
    assert.match(client.stdout, /generate/)
  })

  it('plexus-client generate --local gives the golden tokens', async () => {
    const r = await sh(bin('plexus-client'), ['generate', '--local', ...tokenArgs], { cwd: app })
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout).token_ids, g.greedy_new_ids.slice(0, 8))
  })

  it('installed plexus-node processes serve a swarm that plexus-client generates through', async () => {
    const procs: NodeProcess[] = []
    try {
      const boot = await startNode({ name: 'bootstrap', args: ['bootstrap'], bin: bin('plexus-node'), env: ENV })
      procs.push(boot)
      const addr = boot.addrs[0]
      const nodes = await Promise.all(['0:2', '2:3'].map(async b => await startNode({ name: `node[${b}]`, args: ['join', '--bootstrap', addr, '--model', fixtureDir(FIXTURE), '--blocks', b, '--backend', 'wasm'], bin: bin('plexus-node'), env: ENV })))
      procs.push(...nodes)
      await untilDiscoverable(addr, nodes)
      const r = await sh(bin('plexus-client'), ['generate', '--bootstrap', addr, ...tokenArgs], { cwd: app })
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout).token_ids, g.greedy_new_ids.slice(0, 8))
    } finally {
      await Promise.all(procs.map(async p => { await p.stop() }))
    }
  })

  it('runs on Node 22, the oldest that engines names', async () => {
    const n22 = join(work, 'node22')
    mkdirSync(n22)
    writeFileSync(join(n22, 'package.json'), '{ "name": "node22", "private": true }\n')
    const got = await sh('npm', ['install', '--prefix', n22, '--no-audit', '--no-fund', '--loglevel=error', 'node@22'], { cwd: n22, timeoutMs: 300_000 })
    assert.equal(got.code, 0, `npm install node@22 failed:\n${got.stderr}`)
    const node22 = join(n22, 'node_modules', '.bin', 'node')
    assert.match((await sh(node22, ['--version'])).stdout, /^v22\./)
    const r = await sh(node22, [bin('plexus-client'), 'generate', '--local', ...tokenArgs], { cwd: app })
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout).token_ids, g.greedy_new_ids.slice(0, 8))
  })
})
