// Tokenizing in worker threads (tokenizer-pool.ts): the same ids as the inline tokenizer, special
// tokens included; short texts stay inline; a full queue and a call past its budget fail with named
// errors; a worker that dies, or is stopped over budget, is replaced.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Worker } from 'node:worker_threads'
import { writeTokenizer } from '../../../scripts/lib/make-tokenizer.ts'
import { loadTokenizer, tokenizerFromJson } from '../src/tokenizer.ts'
import type { TextTokenizer } from '../src/tokenizer.ts'
import { TokenizerError, TokenizerPool, encodeOffThread } from '../src/tokenizer-pool.ts'
import { PlexusError } from '../src/errors.ts'

/** Deterministic PRNG (mulberry32). */
function rng (seed: number): () => number {
  return () => {
    seed = (seed + 0x6D2B79F5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// ASCII, Latin-1, Greek/Cyrillic, CJK, emoji (surrogate pairs), controls, lone surrogates
const RANGES: Array<[number, number]> = [[0x20, 0x7e], [0x20, 0x7e], [0xa0, 0x17f], [0x370, 0x4ff], [0x4e00, 0x4fff], [0x1f300, 0x1f64f], [0x0, 0x1f], [0xd800, 0xdfff]]

/** Random text of about `n` code points, with words, whitespace runs and the tokenizer's special tokens. */
function randomText (next: () => number, n: number, specials: string[]): string {
  const parts: string[] = []
  let len = 0
  while (len < n) {
    const r = next()
    let piece: string
    if (r < 0.05 && specials.length > 0) piece = specials[Math.floor(next() * specials.length)]
    else if (r < 0.15) piece = [' ', '  ', '\n', '\t', '\r\n', ' \n '][Math.floor(next() * 6)]
    else if (r < 0.4) piece = ['the', ' keeper', ' lighthouse', 'Zürich', ' 3.14', "'s", ' naïve'][Math.floor(next() * 7)]
    else {
      const [lo, hi] = RANGES[Math.floor(next() * RANGES.length)]
      piece = String.fromCodePoint(lo + Math.floor(next() * (hi - lo + 1)))
    }
    parts.push(piece)
    len += piece.length
  }
  return parts.join('')
}

/** A SentencePiece-layout tokenizer (▁ for spaces, byte fallback, BOS by post-processor), as GGUF files give. */
function sentencePieceTokenizer (): TextTokenizer {
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)]
  const pieces = ['▁', 'e', 't', 'h', 'a', 'r', 'o', 'n', 's', 'w', 'm', 'k', 'p', 'l', 'i', 'c', '▁t', 'he', '▁the', 'ar', '▁s', '▁sw', '▁swar', 'ee', 'ke', '▁ke', '▁kee', '▁keep', 'er', '▁keeper', 'in', 'ng']
  tokens.push(...pieces)
  const merges = ['▁ t', 'h e', '▁t he', 'a r', '▁ s', '▁s w', '▁sw ar', 'e e', 'k e', '▁ ke', '▁ke e', '▁kee p', 'e r', '▁keep er', 'i n', 'n g']
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]))
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [0, 1, 2].map(id => ({ id, content: tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } }
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges }
  }
  return tokenizerFromJson(json, { bos_token: '<s>', eos_token: '</s>' }, { bos: 1, eos: [2] }, 'a SentencePiece-layout test tokenizer')
}

const PROSE = 'The keeper climbed the stairs and wound the clock that turned the lens. '
const errorCode = (code: string) => (err: unknown): boolean => {
  assert.ok(err instanceof TokenizerError, String(err))
  assert.ok(err instanceof PlexusError)
  assert.equal(err.code, code)
  return true
}

describe('tokenizer worker', function () {
  this.timeout(120_000)
  let root: string
  const tokenizers: Array<{ name: string, tok: TextTokenizer, specials: string[] }> = []

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'plexus-tokw-'))
    // the tokenizers the project's test models ship (each chat family's markers), and a SentencePiece layout
    for (const [family, vocabSize] of [['chatml', 512], ['qwen2', 4096], ['llama3', 32000], ['mistral', 1024]] as const) {
      const dir = join(root, family)
      await writeTokenizer(dir, { vocabSize, chatTemplate: family })
      const tok = (await loadTokenizer(dir))!
      const specials = tok.vocabulary!().specialIds.map(id => tok.vocabulary!().tokens[id])
      tokenizers.push({ name: `${family} byte-level BPE, vocab ${vocabSize}`, tok, specials })
    }
    tokenizers.push({ name: 'SentencePiece layout with byte fallback', tok: sentencePieceTokenizer(), specials: ['<s>', '</s>', '<unk>'] })
  })
  after(async () => { if (root != null) await rm(root, { recursive: true, force: true }) })

  it('gives the inline tokenizer\'s ids for every tokenizer: random unicode, special tokens, with and without BOS', async () => {
    const spawned: Worker[] = []
    const pool = new TokenizerPool({ inlineChars: 0, workers: 1, onSpawn: w => { spawned.push(w) } })
    try {
      const next = rng(14)
      let compared = 0
      for (const { name, tok, specials } of tokenizers) {
        const texts = [PROSE.repeat(40), ...Array.from({ length: 6 }, (_, i) => randomText(next, 50 + i * 700, specials)), specials.join(' x ')]
        for (const text of texts) {
          for (const addSpecialTokens of [true, false]) {
            const expected = tok.encode(text, { addSpecialTokens })
            const got = await pool.encode(tok, text, { addSpecialTokens })
            assert.deepEqual(got, expected, `${name}, addSpecialTokens ${addSpecialTokens}, text ${JSON.stringify(text.slice(0, 60))}…`)
            compared += got.length
          }
        }
        // special tokens in the text are the tokenizer's specials, not their spelling
        const marked = await pool.encode(tok, specials[0] + PROSE, { addSpecialTokens: false })
        assert.equal(marked[0], tok.encode(specials[0], { addSpecialTokens: false })[0])
      }
      assert.ok(compared > 10_000, `${compared} ids compared`)
      assert.equal(spawned.length, 1, 'every text was encoded by the one worker')
      // the default (with BOS) matches the inline default
      const { tok } = tokenizers[0]
      assert.deepEqual(await pool.encode(tok, PROSE), tok.encode(PROSE))
      assert.equal((await pool.encode(tok, PROSE))[0], tok.bosTokenId)
    } finally {
      await pool.close()
    }
  })

  it('keeps short texts on the calling thread and sends long ones to a worker; the shared pool too', async () => {
    const spawned: Worker[] = []
    const pool = new TokenizerPool({ inlineChars: 1000, onSpawn: w => { spawned.push(w) } })
    try {
      const { tok } = tokenizers[0]
      assert.deepEqual(await pool.encode(tok, PROSE.repeat(10)), tok.encode(PROSE.repeat(10)))
      assert.equal(spawned.length, 0, 'a text under inlineChars is encoded inline')
      assert.deepEqual(await pool.encode(tok, PROSE.repeat(20)), tok.encode(PROSE.repeat(20)))
      assert.equal(spawned.length, 1, 'a longer one goes to a worker')
      const long = PROSE.repeat(100)
      assert.deepEqual(await encodeOffThread(tok, long, { addSpecialTokens: false }), tok.encode(long, { addSpecialTokens: false }))
    } finally {
      await pool.close()
    }
  })

  it('encodes off the event loop: timers keep firing while a long text is tokenized', async () => {
    const pool = new TokenizerPool({ inlineChars: 0 })
    try {
      const { tok } = tokenizers[2]
      const text = PROSE.repeat(12000) // 860 KB
      await pool.encode(tok, 'warm up: loads the tokenizer in the worker')
      const t0 = performance.now()
      tok.encode(text)
      const inlineMs = performance.now() - t0
      let worst = 0
      let last = performance.now()
      const timer = setInterval(() => { const now = performance.now(); worst = Math.max(worst, now - last); last = now }, 5)
      const t1 = performance.now()
      const ids = await pool.encode(tok, text)
      const workerMs = performance.now() - t1
      clearInterval(timer)
      console.log(`      860 KB: inline ${inlineMs.toFixed(0)} ms; in the worker ${workerMs.toFixed(0)} ms, the event loop's longest gap ${worst.toFixed(0)} ms`)
      assert.equal(ids.length, tok.encode(text).length)
      assert.ok(inlineMs > 150, `inline tokenizing took ${inlineMs.toFixed(0)} ms: too short to tell`)
      assert.ok(worst < inlineMs / 3, `the event loop stalled ${worst.toFixed(0)} ms while the worker tokenized (inline: ${inlineMs.toFixed(0)} ms)`)
    } finally {
      await pool.close()
    }
  })

  it('refuses with tokenizer-busy (503) past the queue\'s calls or bytes, and takes calls again once it drains', async () => {
    const { tok } = tokenizers[1]
    const text = PROSE.repeat(400) // 29 KB
    const pool = new TokenizerPool({ inlineChars: 0, workers: 1, maxQueued: 2 })
    try {
      const first = [pool.encode(tok, text), pool.encode(tok, text)]
      await assert.rejects(pool.encode(tok, text), (err: TokenizerError) => {
        errorCode('tokenizer-busy')(err)
        assert.equal(err.httpStatus, 503)
        assert.match(err.message, /busy: 2 prompts/)
        return true
      })
      assert.deepEqual(pool.load.calls, 2)
      const expected = tok.encode(text)
      for (const ids of await Promise.all(first)) assert.deepEqual(ids, expected)
      assert.deepEqual(pool.load, { calls: 0, bytes: 0 })
      assert.deepEqual(await pool.encode(tok, text), expected)
    } finally {
      await pool.close()
    }
    // by bytes: one call alone is always taken, even over the bound
    const small = new TokenizerPool({ inlineChars: 0, maxQueuedBytes: 20_000 })
    try {
      const one = small.encode(tok, text)
      await assert.rejects(small.encode(tok, PROSE.repeat(30)), errorCode('tokenizer-busy'))
      assert.deepEqual(await one, tok.encode(text))
    } finally {
      await small.close()
    }
  })

  it('stops a call past its time budget with tokenizer-timeout, and a fresh worker takes the next', async () => {
    const spawned: Worker[] = []
    const pool = new TokenizerPool({ inlineChars: 0, workers: 1, timeoutMs: 300, onSpawn: w => { spawned.push(w) } })
    try {
      const { tok } = tokenizers[2]
      await pool.encode(tok, 'warm up')
      // prose without spaces is one pre-token: its merges cost more than linearly (256 Ki: ~2 s inline, 512 Ki: several)
      const slow = 'thekeeperclimbedthestairsandwoundtheclock'.repeat(13_000)
      const t0 = performance.now()
      await assert.rejects(pool.encode(tok, slow), (err: TokenizerError) => {
        errorCode('tokenizer-timeout')(err)
        assert.equal(err.httpStatus, 400)
        assert.match(err.message, /not tokenized within 300 ms/)
        return true
      })
      const ms = performance.now() - t0
      assert.ok(ms < 2000, `the budget's error came after ${ms.toFixed(0)} ms`)
      // a call queued behind the slow one waits, then runs on the replacement
      assert.deepEqual(await pool.encode(tok, PROSE.repeat(30)), tok.encode(PROSE.repeat(30)))
      assert.equal(spawned.length, 2, 'the worker over budget was replaced')
      // a per-call budget overrides the pool's
      await assert.rejects(pool.encode(tok, slow, {}, { timeoutMs: 50 }), errorCode('tokenizer-timeout'))
    } finally {
      await pool.close()
    }
  })

  it('replaces a worker that dies: the call in flight fails with tokenizer-failed, the next gets the right ids', async () => {
    const spawned: Worker[] = []
    const pool = new TokenizerPool({ inlineChars: 0, workers: 1, onSpawn: w => { spawned.push(w) } })
    try {
      const { tok } = tokenizers[3]
      const text = PROSE.repeat(50)
      assert.deepEqual(await pool.encode(tok, text), tok.encode(text))
      // killed while idle
      await spawned[0].terminate()
      assert.deepEqual(await pool.encode(tok, text), tok.encode(text))
      assert.equal(spawned.length, 2)
      // killed mid-call
      const inFlight = pool.encode(tok, 'thekeeperclimbedthestairsandwoundtheclock'.repeat(6000))
      const queued = pool.encode(tok, text)
      await new Promise(resolve => setTimeout(resolve, 50))
      await spawned[1].terminate()
      await assert.rejects(inFlight, (err: TokenizerError) => {
        errorCode('tokenizer-failed')(err)
        assert.match(err.message, /exited|terminated/)
        return true
      })
      assert.deepEqual(await queued, tok.encode(text))
      assert.equal(spawned.length, 3)
    } finally {
      await pool.close()
    }
  })

  it('an aborted call is dropped from the queue with the signal\'s reason', async () => {
    const pool = new TokenizerPool({ inlineChars: 0, workers: 1 })
    try {
      const { tok } = tokenizers[0]
      const busy = pool.encode(tok, PROSE.repeat(2000))
      const ac = new AbortController()
      const waiting = pool.encode(tok, PROSE.repeat(10), {}, { signal: ac.signal })
      assert.equal(pool.load.calls, 2)
      ac.abort(new Error('client went away'))
      await assert.rejects(waiting, /client went away/)
      assert.equal(pool.load.calls, 1)
      await busy
      await assert.rejects(pool.encode(tok, PROSE.repeat(10), {}, { signal: ac.signal }), /client went away/)
    } finally {
      await pool.close()
    }
  })
})
