// Every step result carries a commitment signed by the server; clients keep valid ones and refuse
// results whose commitment is missing, forged or about another step.
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { createPlexusNode } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { signCommitment, verifyCommitment, tensorDigest } from '@plexus/protocol'
import { SESSION_PROTOCOL } from '@plexus/p2p'
import type { StepCommitmentBody } from '@plexus/protocol'
import { initBackend, Checkpoint, Span, ModelHead, loadManifest, inProcessRunner } from '@plexus/runtime'
import { BlockBackend, BackendSet, applyFaults } from '@plexus/server'
import type { FaultInjection } from '@plexus/server'
import { createSessionHandler } from '@plexus/server'
import { RemoteSpanSession, PeerFailure } from '@plexus/client'
import { fixtureDir, golden, maxAbsDiff } from './support/fixtures.ts'

describe('step commitments', function () {
  this.timeout(60_000)
  let ckpt: Checkpoint
  let head: ModelHead
  let modelId: string
  let key: PrivateKey
  let honest: PlexusNode
  let silent: PlexusNode
  let client: PlexusNode
  const backends: BlockBackend[] = []

  const serve = async (privateKey?: PrivateKey, faults?: FaultInjection): Promise<PlexusNode> => {
    const node = await createPlexusNode({ privateKey: privateKey ?? await generateKeyPair('Ed25519'), dhtMode: 'server' })
    const backend = new BlockBackend({ runner: inProcessRunner(await Span.load(ckpt, 0, 2)), config: ckpt.config }, { modelId, faults })
    backends.push(backend)
    await node.handle(SESSION_PROTOCOL, createSessionHandler({ backends: BackendSet.of(backend), log: node.logger.forComponent('test'), privateKey }))
    return node
  }
  const open = async (server: PlexusNode): Promise<RemoteSpanSession> => {
    await client.dial(server.getMultiaddrs()[0])
    return await RemoteSpanSession.open(client, { peer: server.peerId.toString(), target: server.peerId, modelId, start: 0, end: 2, maxLength: 64, hiddenSize: 64 })
  }

  before(async () => {
    await initBackend('wasm')
    ckpt = await Checkpoint.open(fixtureDir('tiny-llama'))
    head = await ModelHead.load(ckpt)
    modelId = (await loadManifest(ckpt, { write: false })).id
    key = await generateKeyPair('Ed25519')
    honest = await serve(key)
    silent = await serve()
    client = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), dhtMode: 'client', listen: [] })
  })
  after(async () => {
    await client?.stop(); await honest?.stop(); await silent?.stop()
    for (const b of backends) await b.dispose()
    head.dispose(); await ckpt.close()
  })

  it('accompanies every step, signed by the server, naming the step and both tensors', async () => {
    const g = golden('tiny-llama')
    const s = await open(honest)
    const x = head.embed(g.prompt_ids)
    const y = await s.forward(x, g.prompt_ids.length)
    const c0 = s.lastCommitment!
    const y2 = await s.forward(head.embed([7]), 1)
    const c1 = s.lastCommitment!
    assert.equal(s.committedSteps, 2)
    assert.equal(c0.peer, honest.peerId.toString())
    assert.deepEqual([c0.step, c0.position, c0.tokens, c1.step, c1.position, c1.tokens], [0, 0, 12, 1, 12, 1])
    assert.equal(c0.inputDigest, await tensorDigest(x))
    assert.equal(c0.outputDigest, await tensorDigest(y))
    assert.equal(c1.outputDigest, await tensorDigest(y2))
    assert.equal(c0.modelId, modelId)
    await s.close()
  })

  it('a result without a commitment fails the step (the client re-routes)', async () => {
    const s = await open(silent)
    await assert.rejects(s.forward(head.embed([1, 2]), 2), (err: Error) => err instanceof PeerFailure && /without a step commitment/.test(err.message))
  })

  it('binds a lying server (fault injection) to the wrong output it sent', async () => {
    const liar = await serve(await generateKeyPair('Ed25519'), { perturb: { probability: 1, scale: 0.1 } })
    const x = head.embed([1, 5, 9])
    const truth = await (await open(honest)).forward(x, 3)
    const s = await open(liar)
    const lie = await s.forward(x, 3)
    assert.ok(maxAbsDiff(lie, truth) > 1e-2, 'the injected fault changes the output')
    assert.equal(s.lastCommitment!.outputDigest, await tensorDigest(lie))
    assert.notEqual(s.lastCommitment!.outputDigest, await tensorDigest(truth))
    await liar.stop()
  })

  it('fault injection: skip returns the input, perturb scales with the output, off does nothing', () => {
    const input = Float32Array.from([1, 2, 3, 4])
    const output = Float32Array.from([10, -10, 10, -10])
    assert.deepEqual(applyFaults({ skip: { probability: 1 } }, input, output), input)
    assert.equal(applyFaults({ skip: { probability: 0 }, perturb: { probability: 0, scale: 1 } }, input, output), output)
    const big = new Float32Array(10_000).fill(3)
    const noisy = applyFaults({ perturb: { probability: 1, scale: 0.5 } }, big, big)
    let ss = 0
    for (let i = 0; i < big.length; i++) ss += (noisy[i] - 3) ** 2
    const rms = Math.sqrt(ss / big.length)
    assert.ok(rms > 1.3 && rms < 1.7, `noise RMS ${rms} ≈ 0.5 × 3`)
  })

  it('rejects forged, altered, misattributed and mismatched commitments', async () => {
    const body: StepCommitmentBody = {
      modelId, start: 0, end: 2, sessionId: 'ab'.repeat(16), step: 3, position: 9, tokens: 1,
      inputDigest: 'a'.repeat(64), outputDigest: 'b'.repeat(64)
    }
    const good = await signCommitment(key, body)
    assert.equal(verifyCommitment(good, { expectedPeer: honest.peerId, expected: body }).step, 3)
    // altered payload: the signature no longer verifies
    const env = JSON.parse(good)
    const altered = JSON.stringify({ ...env, payload: env.payload.replace('"step":3', '"step":4') })
    assert.throws(() => verifyCommitment(altered, { expectedPeer: honest.peerId, expected: { ...body, step: 4 } }), /signature does not verify/)
    // signed by someone else, presented as the honest server's
    const other = await signCommitment(await generateKeyPair('Ed25519'), body)
    assert.throws(() => verifyCommitment(other, { expectedPeer: honest.peerId, expected: body }), /is signed by .* but came from/)
    // genuine, but about another step or another output
    assert.throws(() => verifyCommitment(good, { expectedPeer: honest.peerId, expected: { ...body, step: 4 } }), /states step 3, but the step had 4/)
    assert.throws(() => verifyCommitment(good, { expectedPeer: honest.peerId, expected: { ...body, outputDigest: 'c'.repeat(64) } }), /states outputDigest/)
    // not a commitment at all
    assert.throws(() => verifyCommitment('{"payload":"{}","sig":""}', { expectedPeer: honest.peerId, expected: body }), /kind/)
  })
})
