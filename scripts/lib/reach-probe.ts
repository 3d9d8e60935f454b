// Run by bench-reach.ts inside the client's network namespace: opens the swarm's model the way
// plexus-client does (relayed and WebRTC addresses dialled, STUN for ICE), generates greedily for a
// few rounds, and prints one JSON line: per round the decode steps' wall and server-compute times,
// and per hop the kind of connection its stream actually ran on (read mid-generation).
import { setProcessNetwork } from '@plexus/p2p'
import { initBackend, generate } from '@plexus/runtime'
import { connectSwarm, openSwarm, stopNode } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { decodeStepTimer } from './bench-common.ts'

const [bootstrap, stun, dir, promptCsv, tokensArg, roundsArg] = process.argv.slice(2)
const prompt = promptCsv.split(',').map(Number)
const genLen = Number(tokensArg)

/** direct | hole-punched (WebRTC set up through a relay) | relayed, from a connection's remote address. */
const hopKind = (addr: string): string => addr.includes('/webrtc') ? 'hole-punched' : addr.includes('/p2p-circuit') ? 'relayed' : 'direct'

setProcessNetwork({ dialRelayed: true, stun: [stun] })
await initBackend()
const node = await connectSwarm([bootstrap])
const out: Record<string, unknown> = {}
try {
  const model = await openSwarm(node, { dir })
  /** A session on a route; the server may still be announcing itself, so retry for a while. */
  const open = async (len: number): Promise<SwarmSession> => {
    const until = Date.now() + 60_000
    for (;;) {
      try { return await model.session(len) as SwarmSession } catch (err) {
        if (Date.now() > until) throw err
        await new Promise(resolve => setTimeout(resolve, 1000))
      }
    }
  }
  const warm = await open(prompt.length + 4)
  await generate(model.head, warm, prompt, { maxTokens: 4 })
  await warm.close()
  const rounds: Array<{ stepMs: number[], computeMs: number[], tokens: number[] }> = []
  const hops: Array<{ peer: string, start: number, end: number, kinds: string[], addrs: string[] }> = []
  for (let round = 0; round < Number(roundsArg); round++) {
    const session = await open(prompt.length + genLen)
    const timer = decodeStepTimer(() => session.lastStepTimings(), (step) => {
      // which connection each hop's stream runs on, while it is open
      if (step !== 1 || round !== 0) return
      for (const h of session.route) {
        const conns = node.getConnections().filter(c => c.remotePeer.toString() === h.peer)
        const busy = conns.filter(c => c.streams.some(s => s.protocol?.startsWith('/plexus/') === true))
        const addrs = (busy.length > 0 ? busy : conns).map(c => c.remoteAddr.toString())
        hops.push({ peer: h.peer, start: h.start, end: h.end, kinds: [...new Set(addrs.map(hopKind))], addrs })
      }
    })
    const r = await generate(model.head, session, prompt, { maxTokens: genLen, onToken: timer.onToken })
    const stepMs = timer.steps.map(s => s.ms)
    const computeMs = timer.steps.map(s => s.hops.reduce((n, h) => n + h.computeMs, 0))
    rounds.push({ stepMs, computeMs, tokens: r.tokenIds })
    await session.close()
  }
  Object.assign(out, { rounds, hops })
  await model.close()
} catch (err) {
  out.error = (err as Error).stack ?? String(err)
} finally {
  process.stdout.write(JSON.stringify(out) + '\n')
  await stopNode(node)
}
// WebRTC's native library keeps threads alive after the node stopped
process.exit(0)
