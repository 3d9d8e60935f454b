import { NetnsTopology } from '../test/support/netns.ts'
import { fixtureDir, golden } from '../test/support/fixtures.ts'
import { CLIENT_BIN, NODE_BIN } from './lib/local-swarm.ts'
import { createInterface } from 'node:readline'
const topo = new NetnsTopology('pd')
try {
  topo.addSwitch('net'); topo.addHost('pub', 'net', '7.7.7.1/24')
  for (const [h, wan, lan, nat] of [['h1', '7.7.7.11', '192.168.1', 'cone'], ['h2', '7.7.7.12', '192.168.2', 'symmetric'], ['h3', '7.7.7.13', '192.168.3', 'cone']] as const) {
    topo.addSwitch(h); topo.addRouter(`${h}r`, { switch: 'net', cidr: `${wan}/24` }, { switch: h, cidr: `${lan}.1/24` }, nat); topo.addHost(`${h}m`, h, `${lan}.2/24`, `${lan}.1`)
  }
  topo.spawn('pub', process.execPath, [new URL('../test/support/stun-server.ts', import.meta.url).pathname, '7.7.7.1', '3478'])
  const start = async (ns: string, args: string[]) => {
    const c = topo.spawn(ns, process.execPath, [NODE_BIN, ...args, '--json'], { ...process.env, DEBUG: process.env.NDEBUG ?? '' })
    let err = ''; c.stderr!.on('data', d => { err += d })
    const ready: any = await new Promise((res, rej) => { createInterface({ input: c.stdout! }).on('line', l => { try { const e = JSON.parse(l); if (e.event === 'ready') res(e) } catch {} }); c.once('exit', () => rej(new Error(err))) })
    return { ready, err: () => err }
  }
  const boot = await start('pub', ['bootstrap'])
  console.log('boot', boot.ready.addrs)
  const stun = 'stun:7.7.7.1:3478'
  const m = fixtureDir('tiny-llama')
  const s1 = await start('h1m', ['join', '--bootstrap', boot.ready.addrs[0], '--model', m, '--blocks', '0:2', '--stun', stun])
  const s2 = await start('h2m', ['join', '--bootstrap', boot.ready.addrs[0], '--model', m, '--blocks', '2:3', '--stun', stun])
  await new Promise(r => setTimeout(r, 2000))
  const probe = (args: string[], env = {}) => new Promise<string>(res => { const c = topo.spawn('h3m', process.execPath, args, { ...process.env, ...env }); let o = ''; c.stdout!.on('data', d => { o += d }); c.stderr!.on('data', d => { o += d }); const t = setTimeout(() => c.kill('SIGKILL'), 60000); c.once('exit', () => { clearTimeout(t); res(o) }) })
  console.log('PROBE', await probe([new URL('../test/support/hop-probe.ts', import.meta.url).pathname, boot.ready.addrs[0], stun, [s1.ready.peerId, s2.ready.peerId].join(',')], { DEBUG: process.env.PDEBUG ?? '' }))
  if (process.env.GEN) {
    const g = golden('tiny-llama')
    console.log('GEN', (await probe([CLIENT_BIN, 'generate', '--bootstrap', boot.ready.addrs[0], '--model', m, '--stun', stun, '--token-ids', g.prompt_ids.join(','), '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'], { DEBUG: process.env.GDEBUG ?? '' })).slice(-6000))
  }
} finally { await topo.destroy() }
