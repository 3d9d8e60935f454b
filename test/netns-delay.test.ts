// NetnsTopology.delay() in network namespaces (needs root): tc netem where the kernel has it, the
// userspace delay link (scripts/lib/delay-link.c) where it does not. Two hosts on a switch: TCP
// round trips grow by the one-way delay, and a bulk transfer crosses it whole and byte-identical.
import assert from 'node:assert/strict'
import { createInterface } from 'node:readline'
import { NetnsTopology, netnsUnavailable } from './support/netns.ts'
import { runIn } from './support/netns-nodes.ts'

const DELAY = 20
const BULK = 5 << 20

// echoes every byte back
const ECHO_SERVER = `require('net').createServer(s => { s.setNoDelay(true); s.pipe(s) }).listen(5001, () => console.log('listening'))`
// `rtt`: 20 one-byte round trips (after 3 to warm up), as JSON ms; `bulk`: sends BULK seeded bytes
// and prints whether the echo came back complete and identical
const CLIENT = `
const [mode, n] = process.argv.slice(1)
const s = require('net').connect(5001, '10.78.0.2', async () => {
  s.setNoDelay(true)
  if (mode === 'rtt') {
    const rtts = []
    for (let i = 0; i < 23; i++) {
      const t = process.hrtime.bigint()
      await new Promise(resolve => { s.once('data', resolve); s.write('x') })
      if (i >= 3) rtts.push(Number(process.hrtime.bigint() - t) / 1e6)
    }
    console.log(JSON.stringify({ rtts })); s.end(); return
  }
  const sent = Buffer.alloc(Number(n)); let x = 12345
  for (let i = 0; i < sent.length; i++) { x = (x * 1103515245 + 12345) >>> 0; sent[i] = x >>> 24 }
  const parts = []; let got = 0; const t = Date.now()
  s.on('data', d => { parts.push(d); got += d.length; if (got >= sent.length) {
    const back = Buffer.concat(parts)
    console.log(JSON.stringify({ bytes: back.length, identical: back.equals(sent), ms: Date.now() - t })); s.end()
  } })
  s.write(sent)
})`

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] }

describe('netns: NetnsTopology.delay() (needs root)', function () {
  this.timeout(300_000)
  let topo: NetnsTopology | undefined

  before(function () {
    const why = netnsUnavailable()
    if (why != null) throw new Error(`netns delay tests cannot run here: ${why}`)
  })

  after(async () => {
    const prefix = topo?.prefix
    await topo?.destroy()
    if (prefix != null) assert.deepEqual(NetnsTopology.leftovers(prefix), [], 'namespaces left behind')
  })

  it(`${DELAY} ms on one host's egress: TCP round trips grow by it, a ${BULK >> 20} MB transfer arrives whole and identical`, async () => {
    topo = new NetnsTopology('pd')
    topo.addSwitch('lan')
    topo.addHost('a', 'lan', '10.78.0.1/24')
    topo.addHost('b', 'lan', '10.78.0.2/24')
    const server = topo.spawn('b', process.execPath, ['-e', ECHO_SERVER])
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: server.stdout! }).once('line', () => resolve())
      server.once('exit', code => reject(new Error(`echo server exited (${code})`)))
    })
    const measure = async (): Promise<number[]> => {
      const r = await runIn(topo!, 'a', ['-e', CLIENT, 'rtt'], 60_000)
      assert.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout).rtts
    }

    const before = await measure()
    const method = topo.delay('a', 'eth0', DELAY)
    const after = await measure()
    console.log(`      delay by ${method}: TCP round trip median ${median(before).toFixed(2)} ms undelayed, ${median(after).toFixed(2)} ms with ${DELAY} ms (min ${Math.min(...after).toFixed(2)}, max ${Math.max(...after).toFixed(2)})`)
    assert.ok(['netem', 'userspace'].includes(method))
    assert.ok(median(before) < 5, `undelayed round trip ${median(before)} ms`)
    // one way only: the round trip gains the delay once
    assert.ok(median(after) >= DELAY - 1 && median(after) <= DELAY + 15, `delayed round trip ${median(after)} ms`)
    assert.ok(Math.min(...after) >= DELAY - 1, `no round trip beats the delay: ${Math.min(...after)} ms`)

    // large frames (GSO) and offloaded checksums, both ways, through the delayed link
    const bulk = await runIn(topo, 'a', ['-e', CLIENT, 'bulk', String(BULK)], 120_000)
    assert.equal(bulk.code, 0, bulk.stderr)
    const out = JSON.parse(bulk.stdout)
    console.log(`      ${BULK >> 20} MB echoed through the delayed link in ${out.ms} ms`)
    assert.deepEqual({ bytes: out.bytes, identical: out.identical }, { bytes: BULK, identical: true })
  })
})
