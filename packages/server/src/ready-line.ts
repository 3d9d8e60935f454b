// The one line a node prints when it starts serving: what it is, what it serves, how fast, where
// it listens and whether peers can reach it. Its fields are also the JSON `ready` event's.
import type { Reachability } from '@plexus/p2p'
import { shortId } from '@plexus/runtime'
import type { Throughput } from './throughput.ts'
import { describeThroughput } from './throughput.ts'

export interface ReadyInfo {
  peerId: string
  role: 'server' | 'verifier'
  backend: string
  modelName: string
  modelId: string
  numBlocks: number
  start: number
  end: number
  /** How the weights are held: f32, bf16, q8_0, ... */
  format?: string
  throughput?: Throughput
  /** What it announces, read once its reachability settled (a NATed node's relay reservation: settledReachability). */
  addrs: string[]
  reachable: Reachability
  /** The public addresses its router forwards to it (UPnP port mapping), if any: why it is reachable. */
  mapped?: string[]
  /** Pages it serves besides the swarm protocols (metrics, dashboard), by name. */
  urls?: Record<string, string>
}

/**
 * "ready: server 12D3KooW… (wasm) serving blocks 0–5 (6 of 12) of small (03ec28bc2ea1), f32,
 * at 812.3 tokens/s per block (measured now); listening on /ip4/…; reachable: unknown"; behind a
 * router that forwards its ports: "reachable: yes (ports forwarded by the router over UPnP: /ip4/…)".
 */
export function readyLine (r: ReadyInfo): string {
  const blocks = `blocks ${r.start}–${r.end - 1} (${r.end - r.start} of ${r.numBlocks}) of ${r.modelName} (${shortId(r.modelId)})${r.format != null ? `, ${r.format}` : ''}`
  const speed = r.throughput != null ? `, at ${r.throughput.tokensPerSecond.toFixed(1)} tokens/s per block (${describeThroughput(r.throughput)})` : ''
  const what = r.role === 'verifier' ? `verifying ${blocks}` : `serving ${blocks}${speed}`
  const urls = Object.entries(r.urls ?? {}).map(([name, url]) => `; ${name} ${url}`).join('')
  return `ready: ${r.role} ${r.peerId} (${r.backend}) ${what}; listening on ${r.addrs.length > 0 ? r.addrs.join(', ') : 'nothing'}; reachable: ${r.reachable}${mappedNote(r.mapped)}${urls}`
}

function mappedNote (mapped: string[] | undefined): string {
  return mapped != null && mapped.length > 0 ? ` (ports forwarded by the router over UPnP: ${mapped.join(', ')})` : ''
}
