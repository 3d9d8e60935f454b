// Liveness pings (liveness.ts) drop a silent peer, not a healthy one whose own process stalled.
// A frozen peer dropped within ~3 s is asserted in test/p2p-swarm.test.ts ("a frozen peer").
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createPlexusNode } from '../src/index.ts'
import type { PlexusNode } from '../src/index.ts'

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
/** This thread does nothing else for `ms`: what a model load or a long synchronous step does to a node. */
function stall (ms: number): void {
  const until = Date.now() + ms
  while (Date.now() < until) { /* busy */ }
}

describe('p2p: liveness pings', function () {
  this.timeout(40_000)
  const nodes: PlexusNode[] = []
  let child: ChildProcess | undefined
  const node = async (): Promise<PlexusNode> => {
    const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: ['/ip4/127.0.0.1/tcp/0'] })
    nodes.push(n)
    return n
  }
  after(async () => {
    child?.kill('SIGKILL')
    await Promise.all(nodes.map(async n => { await n.stop() }))
  })

  it('a process that keeps stalling for 8 s keeps its connections (libp2p\'s monitor dropped them)', async () => {
    const a = await node()
    const b = await node()
    const conn = await a.dial(b.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
    // a ping or two first: the pings run on a healthy connection
    await sleep(2500)
    // 1.2 s stalls with one loop turn between: a ping in flight advances a step per turn
    for (const until = Date.now() + 8000; Date.now() < until;) {
      stall(1200)
      await new Promise(resolve => setImmediate(resolve))
    }
    await sleep(3000)
    assert.equal(conn.status, 'open', 'the dialer dropped a healthy peer for its own stall')
    assert.equal(b.getConnections(a.peerId).length, 1, 'the listener dropped the dialer')
  })

  it('a peer that dialed us and stalls 6 s is kept (the dialer is the watcher; 20 s for inbound connections)', async () => {
    const us = await node()
    const code = "import { createPlexusNode } from '@plexus/p2p'; import { generateKeyPair } from '@libp2p/crypto/keys'; import { multiaddr } from '@multiformats/multiaddr'; " +
      "const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: [] }); " +
      'const c = await n.dial(multiaddr(process.argv[1])); console.log(\'dialed\'); ' +
      "await new Promise(r => setTimeout(r, 2500)); const until = Date.now() + 6000; while (Date.now() < until) {} console.log('stalled'); " +
      "await new Promise(r => setTimeout(r, 3000)); console.log(c.status); setInterval(() => {}, 1000)"
    const proc = spawn(process.execPath, ['--input-type=module', '-e', code, us.getMultiaddrs()[0].toString()], { stdio: ['ignore', 'pipe', 'inherit'] })
    child = proc
    const lines = createInterface({ input: proc.stdout })
    const said: string[] = []
    const saw = async (what: (l: string) => boolean, ms: number): Promise<string> => await new Promise((resolve, reject) => {
      const t = setTimeout(() => { reject(new Error(`child said ${JSON.stringify(said)}`)) }, ms)
      const check = (): void => { const l = said.find(what); if (l != null) { clearTimeout(t); resolve(l) } }
      lines.on('line', l => { said.push(l); check() })
      check()
    })
    await saw(l => l === 'dialed', 15_000)
    const peer = [...us.getConnections()].map(c => c.remotePeer).find(p => !nodes.some(n => n.peerId.equals(p)))
    assert.ok(peer != null, 'the child is connected')
    await saw(l => l === 'stalled', 15_000)
    // the child's own view once it runs again, and ours
    const status = await saw(l => l === 'open' || l === 'closed' || l === 'closing', 10_000)
    assert.equal(status, 'open', 'the stalled dialer dropped its own healthy connection')
    assert.equal(us.getConnections(peer).length, 1, 'we dropped a peer that dialed us for a 6 s pause')
  })

  it('a frozen peer is still dropped: a listener we dialed, silent 3 s', async () => {
    const us = await node()
    const code = "import { createPlexusNode } from '@plexus/p2p'; import { generateKeyPair } from '@libp2p/crypto/keys'; " +
      "const n = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: ['/ip4/127.0.0.1/tcp/0'] }); console.log(n.getMultiaddrs()[0].toString()); setInterval(() => {}, 1000)"
    child?.kill('SIGKILL')
    const proc = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
    child = proc
    const addr = await new Promise<string>((resolve, reject) => {
      proc.stdout.once('data', (d: Buffer) => { resolve(d.toString().trim()) })
      proc.once('exit', c => { reject(new Error(`child node exited (${c})`)) })
    })
    const conn = await us.dial(multiaddr(addr), { signal: AbortSignal.timeout(5000) })
    const dropped = new Promise<void>(resolve => { us.addEventListener('peer:disconnect', e => { if (e.detail.equals(conn.remotePeer)) resolve() }) })
    const t0 = Date.now()
    proc.kill('SIGSTOP')
    await dropped
    const ms = Date.now() - t0
    proc.kill('SIGKILL')
    // one beat (1 s) plus the deadline (3 s), with slack for a loaded machine
    assert.ok(ms < 7000, `a frozen peer was dropped after ${ms} ms`)
  })
})
