// Plexus processes inside a NetnsTopology's namespaces: a node started up to its ready event, a
// command run to its end, and how a connection runs judged from its remote address.
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'
import type { NetnsTopology } from './netns.ts'
import { NODE_BIN } from '../../scripts/lib/local-swarm.ts'

/** A node's own addresses among those it announces (not the relayed ones). */
export function ownAddrs (addrs: string[]): string[] {
  return addrs.filter(a => !a.includes('/p2p-circuit')).sort()
}

/** direct | hole-punched (WebRTC, set up through a relay) | relayed, from a connection's remote address. */
export function hopKind (addr: string): string {
  return addr.includes('/webrtc') ? 'hole-punched' : addr.includes('/p2p-circuit') ? 'relayed' : 'direct'
}

export interface Started { child: ChildProcess, ready: Record<string, any>, stderr: () => string, ms: number }

/** Starts `plexus-node ARGS --json` in a namespace; resolves on its ready event (`ms`: how long it took). */
export async function startIn (topo: NetnsTopology, ns: string, args: string[], timeoutMs = 120_000, env: NodeJS.ProcessEnv = process.env): Promise<Started> {
  const t0 = Date.now()
  const child = topo.spawn(ns, process.execPath, [NODE_BIN, ...args, '--json'], env)
  let err = ''
  child.stderr!.on('data', (d: Buffer) => { err += d.toString() })
  const ready = await new Promise<Record<string, any>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${ns}: not ready within ${timeoutMs / 1000} s:\n${err}`)), timeoutMs)
    createInterface({ input: child.stdout! }).on('line', line => {
      try { const ev = JSON.parse(line); if (ev.event === 'ready') { clearTimeout(timer); resolve(ev) } } catch {}
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`${ns}: exited (${code}) before it was ready:\n${err}`)) })
  })
  return { child, ready, stderr: () => err, ms: Date.now() - t0 }
}

/** Runs a command in a namespace to its end (killed after `timeoutMs`, its output kept). */
export async function runIn (topo: NetnsTopology, ns: string, args: string[], timeoutMs = 180_000, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = topo.spawn(ns, process.execPath, args, { ...process.env, ...env })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => { stderr += `\n(killed after ${timeoutMs / 1000} s)`; child.kill('SIGKILL') }, timeoutMs)
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}
