// A short seeded run of the fuzzer (scripts/fuzz.ts) against real processes: a bootstrap peer, a
// plexus-node server, a verifier and a `plexus-client serve` gateway. Every protocol the nodes
// register and every gateway route gets inputs; none may crash a process, leave a stream hanging
// or get a 5xx, and an honest generation gives the same text afterwards (the fuzzer checks it and
// exits non-zero otherwise). The full run is `npm run fuzz` (10,000 inputs).
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { ROOT } from '../scripts/lib/local-swarm.ts'

const COUNT = 1000
const TIME_S = 60

describe('fuzzer: random and mutated frames on every protocol, random JSON on every route', function () {
  this.timeout(300_000)

  it(`${COUNT} seeded inputs: no crash, no stuck stream, no 5xx, the same honest text`, async () => {
    const child = spawn(process.execPath, [join(ROOT, 'scripts/fuzz.ts'), '--seed', '7', '--count', String(COUNT), '--time', String(TIME_S), '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
    assert.equal(code, 0, `the fuzzer failed:\n${err.split('\n').slice(-60).join('\n')}`)
    const s = JSON.parse(out.trim().split('\n').pop()!)
    console.log(`      ${s.inputs} inputs in ${s.fuzzSeconds} s: ${s.crashes} crashes, ${s.stuck} stuck, ${s.httpFailures} failed HTTP; RSS ${s.rss.map((x: any) => `${x.process} ${x.baselineMiB}→${x.afterMiB}`).join(', ')} MiB`)
    assert.equal(s.crashes, 0)
    assert.equal(s.stuck, 0)
    assert.equal(s.httpFailures, 0)
    assert.equal(s.sameText, true)
    // it reached the handlers: every Plexus protocol and the main routes got inputs, and the
    // servers refused malformed frames with their own error codes (not only transport resets)
    assert.equal(s.stoppedByTime ? s.inputs > 0 : s.inputs === COUNT, true)
    for (const p of ['session', 'model', 'info', 'kad', 'verify']) {
      assert.ok(Object.keys(s.streams).some(k => k.endsWith(`/plexus/${p}/1.0.0`)), `no inputs on /plexus/${p}/1.0.0`)
    }
    const outcomes = (k: string): Record<string, number> => Object.entries(s.streams as Record<string, any>).find(([name]) => name.endsWith(k))![1].outcomes
    assert.ok(Object.keys(outcomes('/plexus/session/1.0.0')).some(o => o.startsWith('error:bad-frame')), 'no session frame was refused bad-frame')
    assert.ok(Object.keys(outcomes('/plexus/verify/1.0.0')).some(o => o.startsWith('error:bad-frame')), 'no verify frame was refused bad-frame')
    for (const route of ['POST /v1/chat/completions', 'POST /v1/completions', 'POST /v1/messages', 'POST /api/generate', 'POST /api/chat', 'POST /mcp']) {
      assert.ok(s.routes[route]?.inputs > 0, `no inputs on ${route}`)
      assert.ok(Object.keys(s.routes[route].outcomes).includes('400'), `${route} refused nothing with 400`)
    }
  })
})
