// Sampling semantics, and the CLIs' answers to bad flags.
import assert from 'node:assert/strict'
import { Sampler, argmax, logSoftmax, seededRandom, rankByLogit, generate, initBackend, LocalModel } from '@plexus/runtime'
import type { SessionPipeline, Confirmation } from '@plexus/runtime'
import { fixtureDir, golden, runCli, CLIENT_BIN } from './support/fixtures.ts'

describe('sampling', () => {
  const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i * 1.7) * 3)

  it('greedy is argmax; top-k 1 and a tiny top-p are greedy too', () => {
    const best = argmax(logits)
    assert.equal(new Sampler().sample(logits), best)
    for (let seed = 0; seed < 20; seed++) {
      assert.equal(new Sampler({ temperature: 1, topK: 1, seed }).sample(logits), best)
      assert.equal(new Sampler({ temperature: 1, topP: 1e-6, seed }).sample(logits), best)
    }
  })

  it('is reproducible per seed and follows the tempered distribution', () => {
    const draw = (seed: number): number[] => { const s = new Sampler({ temperature: 0.8, seed }); return Array.from({ length: 200 }, () => s.sample(logits)) }
    assert.deepEqual(draw(42), draw(42))
    assert.notDeepEqual(draw(42), draw(43))
    // frequencies of 20,000 draws at T = 1 match softmax within 0.02
    const s = new Sampler({ temperature: 1, seed: 7 })
    const counts = new Array(50).fill(0)
    for (let i = 0; i < 20_000; i++) counts[s.sample(logits)]++
    const p = logSoftmax(logits)
    for (let i = 0; i < 50; i++) assert.ok(Math.abs(counts[i] / 20_000 - Math.exp(p[i])) < 0.02, `token ${i}`)
  })

  it('top-k keeps only the k most likely tokens', () => {
    const top3 = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, 3)
    const s = new Sampler({ temperature: 5, topK: 3, seed: 1 })
    for (let i = 0; i < 500; i++) assert.ok(top3.includes(s.sample(logits)))
  })

  it('ranks candidates as a stable sort by logit would (ties: lower id first), leaving masked tokens out', () => {
    const r = seededRandom(5)
    for (const V of [3, 50, 4099]) {
      // quarter steps: many equal logits; some masked (-Infinity), some negative zeros
      const l = Float32Array.from({ length: V }, (_, i) => i % 17 === 0 ? -Infinity : i % 13 === 0 ? -0 : Math.round((r() - 0.5) * 40) / 4)
      const want = [...l.keys()].filter(i => l[i] > -Infinity).sort((a, b) => l[b] - l[a])
      assert.deepEqual([...rankByLogit(l)], want)
      for (const k of [1, 5, 40]) assert.deepEqual([...rankByLogit(l, k)], want.slice(0, k))
    }
    const masked = Float32Array.from([-Infinity, 2, -Infinity, 1])
    for (let seed = 0; seed < 50; seed++) assert.ok([1, 3].includes(new Sampler({ temperature: 10, seed }).sample(masked)))
    assert.throws(() => new Sampler({ temperature: 1 }).sample(new Float32Array(4).fill(-Infinity)), /every token is masked/)
  })

  it('refuses bad settings', () => {
    assert.throws(() => new Sampler({ temperature: -1 }), /temperature must be ≥ 0/)
    assert.throws(() => new Sampler({ topP: 0 }), /top-p must be in \(0, 1\]/)
    assert.throws(() => new Sampler({ topK: 1.5 }), /top-k must be a non-negative integer/)
  })

  it('seededRandom is uniform enough', () => {
    const r = seededRandom(3)
    let sum = 0
    for (let i = 0; i < 10_000; i++) sum += r()
    assert.ok(Math.abs(sum / 10_000 - 0.5) < 0.02)
  })
})

describe('generate: when tokens are delivered', () => {
  let model: LocalModel
  before(async () => { await initBackend('wasm'); model = await LocalModel.load(fixtureDir('tiny-llama')) })
  after(async () => { await model?.dispose() })

  /** The local session, with a confirmation hook; logs forwards and deliveries in order. */
  async function run (confirm: (held: number, final: boolean) => Confirmation): Promise<string[]> {
    const inner = await model.session(32)
    let held = 0
    const events: string[] = []
    const pipeline: SessionPipeline = {
      forward: async (h, n) => { events.push(`forward ${held}`); held += n; return await inner.forward(h, n) },
      close: async () => { await inner.close() },
      confirm: async (final) => confirm(held, final)
    }
    const r = await generate(model.head, pipeline, [1, 2, 3], { maxTokens: 3, onToken: id => { events.push(`token ${id}`) } })
    await pipeline.close()
    assert.deepEqual(events.filter(e => e.startsWith('token')).map(e => Number(e.slice(6))), r.tokenIds)
    return events.map(e => e.startsWith('token') ? 'token' : e)
  }

  it('without checks, each token is delivered before the next step runs', async () => {
    assert.deepEqual(await run(() => ({ confirmed: Infinity })), ['forward 0', 'token', 'forward 3', 'token', 'forward 4', 'token'])
  })

  it('with checks, a token waits until the output it was sampled from is confirmed', async () => {
    // confirms nothing until the final check
    assert.deepEqual(await run((held, final) => ({ confirmed: final ? held : 0 })), ['forward 0', 'forward 3', 'forward 4', 'token', 'token', 'token'])
  })

  it('hands each token the logits row it was sampled from, also after the pipeline went back', async () => {
    const plain = await model.session(32)
    const want = await generate(model.head, plain, [1, 2, 3], { maxTokens: 5, keepLogits: true })
    await plain.close()
    const inner = await model.session(32)
    let held = 0
    let wentBack = false
    const pipeline: SessionPipeline = {
      forward: async (h, n) => { held += n; return await inner.forward(h, n) },
      close: async () => { await inner.close() },
      // confirms two positions behind, and once, at 6 positions held, goes back to 4
      confirm: async (final) => {
        if (!wentBack && held === 6) { wentBack = true; await inner.truncate!(4); held = 4; return { rewoundTo: 4 } }
        return { confirmed: final ? held : held - 2 }
      }
    }
    const handed: Array<[number, Float32Array]> = []
    const r = await generate(model.head, pipeline, [1, 2, 3], { maxTokens: 5, keepLogits: true, onToken: (id, row) => { handed.push([id, row]) } })
    await pipeline.close()
    assert.ok(wentBack)
    assert.deepEqual(r.tokenIds, want.tokenIds)
    assert.deepEqual(handed.map(([id]) => id), r.tokenIds)
    handed.forEach(([id, row], i) => {
      assert.equal(row, r.logits![i])
      assert.equal(argmax(row), id)
      assert.deepEqual(row, want.logits![i])
    })
  })
})

describe('plexus-client generate: bad flags and files', () => {
  const model = fixtureDir('tiny-llama')
  const cases: Array<[string, string[], RegExp]> = [
    ['no prompt', ['--local', '--model', model], /give exactly one of --prompt or --token-ids/],
    ['both prompts', ['--local', '--model', model, '--prompt', 'x', '--token-ids', '1'], /give exactly one of --prompt or --token-ids/],
    ['bad token ids', ['--local', '--model', model, '--token-ids', '1,x,3'], /--token-ids: "x" is not a token id/],
    ['token id beyond the vocabulary', ['--local', '--model', model, '--token-ids', '1,512'], /token id 512 is outside the vocabulary \(0\.\.511\)/],
    ['text without a tokenizer', ['--local', '--model', model, '--prompt', 'hello'], /this model has no tokenizer\.json: give the prompt as --token-ids/],
    ['a missing model dir', ['--local', '--model', '/nonexistent/model', '--token-ids', '1'], /config\.json: cannot read model config \(ENOENT\)/],
    ['neither --local nor --bootstrap', ['--model', model, '--token-ids', '1'], /give either --local .* or --bootstrap/],
    ['an uninstalled backend', ['--local', '--model', model, '--token-ids', '1', '--backend', 'tensorflow'], /backend "tensorflow" needs @tensorflow\/tfjs-node-gpu .* or @tensorflow\/tfjs-node installed/],
    ['a bad backend name', ['--local', '--model', model, '--token-ids', '1', '--backend', 'metal'], /Invalid values:[\s\S]*backend/],
    ['negative max tokens', ['--local', '--model', model, '--token-ids', '1', '--max-tokens', '-3'], /--max-tokens must be a non-negative integer/],
    ['a context overflow', ['--local', '--model', model, '--token-ids', '1', '--max-tokens', '600'], /exceed the model's context of 512/],
    ['a bad bootstrap address', ['--bootstrap', '/ip4/127.0.0.1/tcp/1', '--model', model, '--token-ids', '1'], /bad bootstrap address "\/ip4\/127\.0\.0\.1\/tcp\/1": must end in \/p2p\/<peer id>/],
    ['trust level attested', ['--local', '--model', model, '--token-ids', '1', '--trust', 'attested'], /--trust attested is not supported yet: it needs hardware attestation/],
    ['an unknown trust level', ['--local', '--model', model, '--token-ids', '1', '--trust', 'maybe'], /Invalid values:[\s\S]*trust/],
    ['verified without a swarm', ['--local', '--model', model, '--token-ids', '1', '--trust', 'verified'], /--trust verified checks the servers of a swarm: use it with --bootstrap, not --local/],
    ['a check rate above 1', ['--local', '--model', model, '--token-ids', '1', '--check-rate', '1.5'], /--check-rate must be between 0 and 1 \(got 1\.5\)/],
    ['a trusted verifier that is no peer id', ['--local', '--model', model, '--token-ids', '1', '--trust-verifier', 'bob'], /--trust-verifier bob: not an Ed25519 peer id/]
  ]
  for (const [what, args, re] of cases) {
    it(`explains ${what} in one line and exits 2`, async () => {
      const r = await runCli(CLIENT_BIN, ['generate', ...args])
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, re)
      assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace: ${r.stderr}`)
    })
  }

  it('samples reproducibly with --seed', async () => {
    const g = golden('tiny-llama')
    const run = async (seed: number): Promise<number[]> => {
      const r = await runCli(CLIENT_BIN, ['generate', '--local', '--model', model, '--token-ids', g.prompt_ids.join(','), '--max-tokens', '12',
        '--temperature', '0.9', '--top-p', '0.95', '--top-k', '40', '--seed', String(seed), '--ignore-eos', '--json'])
      assert.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout).token_ids
    }
    const [a, b, c] = await Promise.all([run(1), run(1), run(2)])
    assert.deepEqual(a, b)
    assert.notDeepEqual(a, c)
  })
})
