// Progress and logs of the command-line tools, from real processes: a node hashing and loading a
// model (--log-format json), a client fetching a model's parts from it (--json), and a local
// generation's plain progress lines, silenced by --log-level warn.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ProgressMeter } from '@plexus/runtime'
import type { ProgressEvent } from '@plexus/runtime'
import { startNode, untilDiscoverable, NODE_BIN } from '../scripts/lib/local-swarm.ts'
import type { NodeProcess } from '../scripts/lib/local-swarm.ts'
import { fixtureDir, runCli, CLIENT_BIN, NODE } from './support/fixtures.ts'

const MODEL = 'progress-tiny'
const FILES = ['config.json', 'generation_config.json', 'model.safetensors']

/** Every line of `text` as JSON (the assertion names the first line that is not). */
function jsonLines (text: string): Array<Record<string, any>> {
  return text.split('\n').filter(l => l !== '').map(l => {
    try { return JSON.parse(l) } catch { assert.fail(`not a JSON line: ${l}`) }
  })
}

/** One task's progress events: they start at 0, never go back, and end with done === total > 0. */
function assertTask (events: Array<Record<string, any>>, task: string): Array<Record<string, any>> {
  const mine = events.filter(e => e.event === 'progress' && e.task === task)
  assert.ok(mine.length >= 2, `${task}: ${mine.length} progress events (want a first and a last)`)
  assert.equal(mine[0].done, 0)
  for (let i = 1; i < mine.length; i++) assert.ok(mine[i].done >= mine[i - 1].done, `${task}: done went back at event ${i}`)
  const last = mine[mine.length - 1]
  assert.ok(last.total > 0, `${task}: total ${last.total}`)
  assert.equal(last.done, last.total)
  assert.ok(mine.every(e => e.unit === 'bytes' && e.total === last.total && e.level === 'info' && typeof e.time === 'string'))
  return mine
}

describe('progress and logs', function () {
  this.timeout(240_000)
  let tmp: string
  let model: string
  let bootstrap: NodeProcess | undefined
  let server: ChildProcess | undefined
  let serverErr = ''

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'plexus-progress-'))
    // no manifest: the node must hash the checkpoint to learn the model id
    model = join(tmp, MODEL)
    for (const f of FILES) await cp(join(fixtureDir('tiny-llama'), f), join(model, f))
  })

  after(async () => {
    server?.kill('SIGKILL')
    await bootstrap?.stop()
    await rm(tmp, { recursive: true, force: true })
  })

  it('ProgressMeter: a first and a last event, at most one in between per interval, done clamped to total', async () => {
    const events: ProgressEvent[] = []
    const meter = new ProgressMeter(e => events.push(e), { task: 'load', model: 'm', total: 1000 }, 50)
    for (let i = 0; i < 500; i++) meter.add(1) // within one interval: no event
    await new Promise(resolve => setTimeout(resolve, 60))
    meter.add(1) // the interval passed: one event
    meter.add(10_000) // reaches the total: left to finish()
    meter.finish()
    meter.finish()
    assert.deepEqual(events.map(e => e.done), [0, 501, 1000])
    assert.ok(events.every(e => e.total === 1000 && e.task === 'load' && e.unit === 'bytes'))
  })

  it('plexus-node join --log-format json: hash, then load, then one ready object; every stderr line JSON; stdout empty', async () => {
    bootstrap = await startNode({ name: 'bootstrap', args: ['bootstrap', '--listen', '/ip4/127.0.0.1/tcp/0'] })
    let out = ''
    server = spawn(NODE, [NODE_BIN, 'join', '--bootstrap', bootstrap.addrs[0], '--model', model, '--blocks', '0:3', '--listen', '/ip4/127.0.0.1/tcp/0', '--backend', 'wasm', '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    server.stdout!.on('data', (d: Buffer) => { out += d.toString() })
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ready event within 120 s:\n${serverErr}`)), 120_000)
      server!.stderr!.on('data', (d: Buffer) => {
        serverErr += d.toString()
        const line = serverErr.slice(0, serverErr.lastIndexOf('\n')).split('\n').find(l => l.includes('"event":"ready"'))
        if (line != null) { clearTimeout(timer); resolve() }
      })
      server!.once('exit', (code) => { clearTimeout(timer); reject(new Error(`node exited (${code}):\n${serverErr}`)) })
    })
    const events = jsonLines(serverErr.slice(0, serverErr.lastIndexOf('\n') + 1))
    const ready = events.find(e => e.event === 'ready')!
    const hash = assertTask(events, 'hash')
    const load = assertTask(events, 'load')
    assert.equal(hash[0].model, MODEL)
    assert.deepEqual(load[0].blocks, [0, 3])
    const at = (e: Record<string, any>): number => events.indexOf(e)
    assert.ok(at(hash[hash.length - 1]) < at(load[0]), 'the load starts after the hash ends')
    assert.ok(at(load[load.length - 1]) < at(ready), 'ready comes after the load')
    assert.ok(events.every(e => e.component === 'node'))
    assert.equal(ready.level, 'info')
    assert.equal(ready.role, 'server')
    assert.equal(ready.reachable, 'local') // loopback only
    assert.equal(ready.format, 'f32')
    assert.deepEqual([ready.start, ready.end, ready.numBlocks], [0, 3, 3])
    assert.match(ready.msg, /^ready: server 12D3KooW\w+ \(wasm\) serving blocks 0–2 \(3 of 3\) of progress-tiny \(28e4da1d7f5b\), f32, at [\d.]+ tokens\/s per block \(measured .*\); listening on \/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3KooW\w+; reachable: local$/)
    assert.equal(out, '', 'nothing on stdout without --json')
  })

  it('plexus-client generate --json fetching the parts: fetch progress as JSON on stderr, one result on stdout', async () => {
    assert.ok(bootstrap != null && server != null, 'needs the node of the previous test')
    const ready = jsonLines(serverErr.split('\n').find(l => l.includes('"event":"ready"'))!)[0]
    await untilDiscoverable(bootstrap.addrs[0], [{ name: 'server', peerId: ready.peerId, ready, stderr: () => serverErr } as unknown as NodeProcess])
    const r = await runCli(CLIENT_BIN, ['generate', '--bootstrap', bootstrap.addrs[0], '--model', MODEL, '--cache-dir', join(tmp, 'cache'),
      '--token-ids', '1,2,3', '--max-tokens', '2', '--ignore-eos', '--backend', 'wasm', '--json'])
    assert.equal(r.code, 0, r.stderr)
    const result = JSON.parse(r.stdout)
    assert.equal(result.completion_tokens, 2)
    // the client's human lines stay text; progress events are JSON lines among them
    const events = r.stderr.split('\n').filter(l => l.startsWith('{')).map(l => JSON.parse(l))
    const fetch = assertTask(events, 'fetch')
    assert.equal(fetch[0].model, MODEL)
    assert.ok(fetch.every(e => e.component === 'client'))
  })

  it('plexus-client generate --local, stderr not a terminal: plain progress lines; --log-level warn: none', async () => {
    const args = ['generate', '--local', '--model', model, '--token-ids', '1,2,3', '--max-tokens', '2', '--ignore-eos', '--backend', 'wasm']
    const r = await runCli(CLIENT_BIN, args)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^\d+ \d+\n$/)
    const lines = r.stderr.split('\n')
    assert.ok(lines.includes(`[plexus] loading blocks 0:3 of ${MODEL}: 0.0/0.6 MiB (0%)`), r.stderr)
    assert.ok(lines.includes(`[plexus] loading blocks 0:3 of ${MODEL}: 0.6/0.6 MiB (100%)`), r.stderr)

    const quiet = await runCli(CLIENT_BIN, [...args, '--log-level', 'warn'])
    assert.equal(quiet.code, 0, quiet.stderr)
    assert.equal(quiet.stdout, r.stdout)
    assert.doesNotMatch(quiet.stderr, /\[plexus\]/)
  })

  it('PLEXUS_LOG_FORMAT=json: an error is one JSON object naming it; a bad --log-level is a usage error', async () => {
    const r = await runCli(CLIENT_BIN, ['generate', '--local', '--model', join(tmp, 'absent'), '--token-ids', '1', '--backend', 'wasm'], { env: { ...process.env, PLEXUS_LOG_FORMAT: 'json' } })
    assert.equal(r.code, 2, r.stderr)
    const [err, ...rest] = jsonLines(r.stderr)
    assert.deepEqual(rest, [])
    assert.equal(err.level, 'error')
    assert.equal(err.component, 'client')
    assert.equal(err.error, 'ConfigError')
    assert.match(err.msg, /absent\/config\.json: cannot read model config/)

    const bad = await runCli(CLIENT_BIN, ['generate', '--local', '--model', model, '--token-ids', '1', '--log-level', 'loud'])
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /^plexus-client: Invalid values:\n {2}Argument: log-level, Given: "loud", Choices: "error", "warn", "info", "debug"/)
  })
})
