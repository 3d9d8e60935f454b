// Calls into worker threads (worker-rpc.ts): answers, errors that keep their name and code,
// transferred buffers, and a worker that is terminated or dies failing the calls still waiting.
import assert from 'node:assert/strict'
import { Worker } from 'node:worker_threads'
import { PlexusError, SpanError } from '@plexus/runtime'
import type { TestApi } from './support/rpc-worker.ts'
import { WorkerRpc } from '../src/worker-rpc.ts'

const WORKER = new URL('./support/rpc-worker.ts', import.meta.url)

describe('worker RPC', function () {
  this.timeout(60_000)
  let rpc: WorkerRpc<TestApi, number>
  const events: number[] = []

  before(async () => {
    rpc = await WorkerRpc.start<TestApi, number>(new Worker(WORKER, { workerData: { events: [1, 2, 3] } }), {
      label: 'test worker',
      errors: { SpanError: e => new SpanError(e.message) },
      onEvent: e => { events.push(e) }
    })
  })
  after(async () => { await rpc?.terminate() })

  it('answers calls by id, concurrent ones each with its own answer; setup events come first', async () => {
    assert.deepEqual(events, [1, 2, 3])
    const answers = await Promise.all([1, 2, 3, 4].map(async i => await rpc.call('echo', { i, s: 'x'.repeat(i) })))
    assert.deepEqual(answers, [1, 2, 3, 4].map(i => ({ i, s: 'x'.repeat(i) })))
  })

  it('transfers buffers both ways: the sender loses them', async () => {
    const x = new Float32Array([1, 2, 3])
    const y = await rpc.call('double', { x }, [x.buffer])
    assert.equal(x.byteLength, 0, 'x moved to the worker')
    assert.deepEqual([...y], [2, 4, 6])
  })

  it('carries errors across with name, message and code', async () => {
    await assert.rejects(rpc.call('fail', { kind: 'plexus' }), (err: any) => {
      assert.ok(err instanceof PlexusError)
      assert.equal(err.code, 'out-of-room')
      assert.equal(err.httpStatus, 503)
      assert.equal(err.message, 'no room for the session')
      return true
    })
    // rebuilt as its own class when the caller names it
    await assert.rejects(rpc.call('fail', { kind: 'span' }), (err: any) => err instanceof SpanError && err.name === 'SpanError' && err.code === 'span' && /past the cache/.test(err.message))
    await assert.rejects(rpc.call('fail', { kind: 'named' }), (err: any) => err.name === 'RangeError' && err.message === 'too far' && err.code === undefined)
    await assert.rejects(rpc.call('fail', { kind: 'string' }), (err: any) => err.name === 'Error' && err.message === 'a bare string')
    await assert.rejects(rpc.call('nothing' as 'echo', {}), /no method "nothing"/)
    // the worker keeps serving
    assert.equal(await rpc.call('echo', 7), 7)
  })

  it('terminating the worker rejects the calls still pending, and every later one', async () => {
    const own = await WorkerRpc.start<TestApi, number>(new Worker(WORKER), { label: 'doomed worker' })
    const pending = [own.call('hang', {}), own.call('hang', {})]
    const settled = Promise.allSettled(pending)
    await own.terminate()
    for (const r of await settled) {
      assert.equal(r.status, 'rejected')
      assert.match((r as PromiseRejectedResult).reason.message, /doomed worker was terminated/)
    }
    await assert.rejects(own.call('echo', 1), /doomed worker was terminated/)
    assert.match(own.failure!.message, /was terminated/)
  })

  it('a worker that dies fails its pending calls with its exit code', async () => {
    const own = await WorkerRpc.start<TestApi, number>(new Worker(WORKER), { label: 'fragile worker', unrefWhenIdle: true })
    const hanging = own.call('hang', {})
    await assert.rejects(own.call('exit', { code: 7 }), /fragile worker exited with code 7/)
    await assert.rejects(hanging, /fragile worker exited with code 7/)
    await assert.rejects(own.call('echo', 1), /exited with code 7/)
  })

  it('a setup that throws rejects start with its error (the worker is terminated)', async () => {
    const seen: number[] = []
    await assert.rejects(WorkerRpc.start<TestApi, number>(new Worker(WORKER, { workerData: { failSetup: true, events: [5] } }), { label: 'broken worker', onEvent: e => { seen.push(e) } }),
      (err: any) => err instanceof PlexusError && err.code === 'bad-setup' && err.message === 'could not load')
    assert.deepEqual(seen, [5])
  })
})
