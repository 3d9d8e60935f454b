// Run inside a namespace: a node as `plexus-node join` makes it (networkOptions), dialling the
// bootstrap peer given, and how long its reachability took to settle (what the ready line waits
// for). Prints one JSON line: { settledMs, reachable, mapped, upnp }.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createPlexusNode, dialBootstrap, networkOptions, portMapped, settledReachability } from '@plexus/p2p'

const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), ...await networkOptions({}, 'join'), dhtMode: 'server' })
try {
  await dialBootstrap(node, [process.argv[2]])
  const t0 = Date.now()
  const reachable = await settledReachability(node)
  process.stdout.write(JSON.stringify({ settledMs: Date.now() - t0, reachable, mapped: portMapped(node), upnp: node.services.upnp?.state }) + '\n')
} finally {
  await node.stop()
}
// WebRTC's native library keeps threads alive after the node stopped
process.exit(0)
