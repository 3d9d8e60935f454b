// Run inside a client's network namespace: dials each given server the way a swarm client does
// (direct addresses first, then WebRTC set up through a relay, then the relay itself) and prints
// one JSON line: for every peer, how the connection runs (direct | hole-punched | relayed).
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { createPlexusNode, dialBootstrap, waitForDhtPeers } from '@plexus/p2p'

const [bootstrap, stun, peers] = process.argv.slice(2)
const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client', dialRelayed: true, stun: stun !== '' ? [stun] : [] })
const out: Record<string, { via: string, addr: string, ms: number, pingMs: number } | { error: string }> = {}
try {
  await dialBootstrap(node, [bootstrap])
  await waitForDhtPeers(node, { signal: AbortSignal.timeout(10_000) })
  for (const id of peers.split(',')) {
    const t0 = Date.now()
    try {
      const peerId = peerIdFromString(id)
      await node.peerRouting.findPeer(peerId, { signal: AbortSignal.timeout(10_000) })
      const conn = await node.dial(peerId, { signal: AbortSignal.timeout(30_000) })
      const addr = conn.remoteAddr.toString()
      const ms = Date.now() - t0
      // round trips over that connection (libp2p ping, 32 bytes): what the path adds to each step
      const rtts: number[] = []
      for (let i = 0; i < 20; i++) rtts.push(await node.services.ping.ping(peerId, { signal: AbortSignal.timeout(5_000) }))
      rtts.sort((x, y) => x - y)
      out[id] = { via: addr.includes('/webrtc') ? 'hole-punched' : addr.includes('/p2p-circuit') ? 'relayed' : 'direct', addr, ms, pingMs: rtts[10], ...(conn.limits != null ? { limits: JSON.parse(JSON.stringify(conn.limits, (_k, v) => typeof v === 'bigint' ? Number(v) : v)) } : {}) }
    } catch (err) {
      out[id] = { error: (err as Error).message }
    }
  }
} finally {
  process.stdout.write(JSON.stringify(out) + '\n')
  await node.stop()
}
// WebRTC's native library keeps threads alive after the node stopped
process.exit(0)
