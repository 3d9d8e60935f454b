// A verifier's work per remote peer (verifier-peer-limits.ts): one peer, over however many
// streams, may have at most N checks and M re-checks in progress; beyond that it is refused
// busy, naming the per-peer limit, while another peer's check goes through. One process: a
// verify handler over a stand-in verifier on a libp2p node, and two client nodes, on loopback.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Channel, PROTOCOLS, VERIFY_PROTOCOL, createPlexusNode } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { decodeVerifyMessage, encodeVerifyMessage } from '@plexus/protocol'
import type { CheckMessage, VerifyMessage } from '@plexus/protocol'
import { createVerifyHandler, DEFAULT_MAX_CHECKS_PER_PEER, DEFAULT_MAX_RECHECKS_PER_PEER } from '@plexus/server'
import type { Verifier } from '@plexus/server'

const hex = (n: number): string => randomBytes(n).toString('hex')
/** Checks of this session wait for the gate: the verifier's work, held in progress. */
const SLOW = hex(16)

describe('verifier: per-peer limits on checks and re-checks', function () {
  this.timeout(30_000)
  let verifierNode: PlexusNode
  let attacker: PlexusNode
  let honest: PlexusNode
  let open!: () => void
  const gate = new Promise<void>(resolve => { open = resolve })

  // the channel and the limits are under test, not the math: every check passes, every re-check is unconfirmed
  const verifier = {
    has: () => false,
    close: async () => {},
    reports: new Map(),
    check: async (msg: CheckMessage) => {
      if (msg.sessionId === SLOW) await gate
      return { type: 'verdict', verifyId: msg.verifyId, ok: true, length: 1, maxError: 0, tolerance: 0.02 }
    },
    // like the real one: a new computation takes the peer's turn (a kept answer would not)
    recheck: async (_bytes: Uint8Array, peerSlot?: () => () => void) => {
      const leave = peerSlot?.()
      try { await gate; return { type: 'rechecked', confirmed: false, error: 0, reason: 'stand-in' } } finally { leave?.() }
    }
  } as unknown as Verifier

  before(async () => {
    verifierNode = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'server' })
    await verifierNode.handle(VERIFY_PROTOCOL, createVerifyHandler({ verifier, log: verifierNode.logger.forComponent('plexus:test:verify'), budget: verifierNode.services.plexus.budget }), { maxInboundStreams: 64 })
    attacker = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
    honest = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client' })
    for (const n of [attacker, honest]) await n.dial(verifierNode.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
  })

  after(async () => {
    open()
    for (const n of [attacker, honest, verifierNode]) await n?.stop()
  })

  const check = (sessionId: string): CheckMessage => ({
    type: 'check', verifyId: hex(16), server: verifierNode.peerId.toString(), modelId: 'ab'.repeat(32), start: 0, end: 1,
    sessionId, hidden: 4, maxLength: 16, commitments: ['c0'], inputs: new Float32Array(4), outputs: new Float32Array(4)
  })

  /** Sends one message on a fresh stream; its answer, or 'waiting' when none came in `ms`. */
  async function send (from: PlexusNode, msg: VerifyMessage, ms: number): Promise<VerifyMessage | 'waiting'> {
    const stream = await from.dialProtocol(verifierNode.peerId, VERIFY_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    const channel = new Channel(stream, PROTOCOLS.verify.client)
    await channel.write(encodeVerifyMessage(msg))
    try {
      const frame = await channel.read(AbortSignal.timeout(ms))
      return frame == null ? 'waiting' : decodeVerifyMessage(frame)
    } catch {
      return 'waiting'
    }
  }

  it(`one peer gets ${DEFAULT_MAX_CHECKS_PER_PEER} checks and ${DEFAULT_MAX_RECHECKS_PER_PEER} re-check at once, the rest busy; another peer is served meanwhile`, async () => {
    // the held ones keep waiting (their answers come after the gate opens): started, not awaited
    const held = Array.from({ length: DEFAULT_MAX_CHECKS_PER_PEER }, async () => await send(attacker, check(SLOW), 20_000))
    const heldRecheck = send(attacker, { type: 'recheck', report: randomBytes(64) }, 20_000)
    await new Promise(resolve => setTimeout(resolve, 300))

    const extra = await Promise.all([send(attacker, check(SLOW), 5000), send(attacker, check(SLOW), 5000)])
    for (const r of extra) {
      assert.ok(r !== 'waiting' && r.type === 'error', JSON.stringify(r))
      assert.equal(r.code, 'busy')
      assert.equal(r.message, `busy: peer ${attacker.peerId.toString()} already has ${DEFAULT_MAX_CHECKS_PER_PEER} checks in progress here (the per-peer check limit is ${DEFAULT_MAX_CHECKS_PER_PEER})`)
    }
    const extraRecheck = await send(attacker, { type: 'recheck', report: randomBytes(64) }, 5000)
    assert.ok(extraRecheck !== 'waiting' && extraRecheck.type === 'error', JSON.stringify(extraRecheck))
    assert.equal(extraRecheck.code, 'busy')
    assert.match(extraRecheck.message, /the per-peer recheck limit is 1\)$/)

    // another peer's check is its own: answered at once
    const other = await send(honest, check(hex(16)), 5000)
    assert.ok(other !== 'waiting' && other.type === 'verdict' && other.ok, JSON.stringify(other))

    // the held work finishes once the verifier gets to it, and frees the peer's slots
    open()
    for (const r of await Promise.all(held)) assert.ok(r !== 'waiting' && r.type === 'verdict', JSON.stringify(r))
    const rechecked = await heldRecheck
    assert.ok(rechecked !== 'waiting' && rechecked.type === 'rechecked', JSON.stringify(rechecked))
    const again = await send(attacker, check(SLOW), 5000)
    assert.ok(again !== 'waiting' && again.type === 'verdict', JSON.stringify(again))
  })
})
