// Writes a small, deterministic GPT-2-style byte-level BPE tokenizer into a
// model directory, so tiny test checkpoints ship a real tokenizer.json that the
// Hugging Face libraries (Rust, Python and JS) all load.
//
// Id layout for a vocabulary of N:
//   0 <unk>, 1 <s>, 2 </s>                 special, in added_tokens
//   3 .. 258                               the 256 byte-level symbols, in byte order
//   259 ..                                 merges learned from CORPUS below
//   ..                                     merges for generated filler words, until full
//   N-2 <|im_start|>, N-1 <|im_end|>       special, the chat template's turn markers
//                                          (another family's template: its own markers, see chat-templates.ts)
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CHAT_FAMILIES } from './chat-templates.ts'
import type { ChatTemplateName } from './chat-templates.ts'

const SPECIALS = ['<unk>', '<s>', '</s>']

// Plain English prose to learn merges from; written for this file.
const CORPUS = `The old lighthouse stood at the end of a narrow road that ran along the cliffs. Every evening the keeper climbed the stairs, wound the clock that turned the lens, and watched the first ships of the night come around the point. He had done this for thirty years, and he said that the sea was never the same twice. Some nights it was calm and silver under the moon; other nights the wind came hard from the west and the waves broke white against the rocks below.

In the village, people kept small gardens behind their houses. They grew beans, potatoes, onions and a few rows of flowers that the children picked for the kitchen table. On market days the square filled with carts of apples, cheese, bread and fish, and everyone talked about the weather, the price of wool, and who was going to marry whom. The baker opened before dawn, and the smell of warm bread drifted down every street.

A computer is a machine that follows instructions. It reads numbers from memory, adds or compares them, and writes the results back, billions of times each second. When many computers work together they can share a task that would be too large for any one of them. Each machine handles a part of the problem and passes its answer to the next, like people standing in a line and handing buckets of water toward a fire.

Learning a language takes patience. At first the words sound strange and the grammar seems to have no rules at all. Then, slowly, patterns appear: the same endings, the same small words that hold sentences together, the same ways of asking a question or giving an answer. A good teacher does not explain everything at once. She lets the student read, listen and make mistakes, and she corrects them gently when it matters.

The river rose after three days of rain. Water covered the lower fields and reached the steps of the mill, but the bridge held. Farmers moved their animals to higher ground and waited. When the sun finally returned, the air was clean and cool, the hills were bright green, and the birds were louder than anyone could remember. By the end of the week the water had gone down, leaving mud, broken branches and a thin line of sand along every wall.

Why do we tell stories? Perhaps because a story is a way to remember what happened and to imagine what could happen next. A story has a beginning, a middle and an end; it has people who want something and things that stand in their way. We listen because we want to know how it turns out, and we keep listening because, in the end, the story is also about us.

Good tools are simple to use and hard to misuse. They do one thing well, they fail loudly when something is wrong, and they leave the work better than they found it. The best ones are often quiet: you notice them only when they are missing. Write down what you learn, check your numbers twice, and share what you have with the people who need it.`

// Oniguruma's GPT-2 pattern as JS; the ByteLevel pre-tokenizer splits with it.
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu

/** GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upward. */
function bytesToUnicode (): string[] {
  const table: string[] = new Array(256)
  let shifted = 0
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
    table[b] = String.fromCharCode(printable ? b : 256 + shifted++)
  }
  return table
}

const BYTE_SYMBOLS = bytesToUnicode()
const utf8 = new TextEncoder()

/** A pre-token as its sequence of byte-level symbols. */
function byteSymbols (text: string): string[] {
  return Array.from(utf8.encode(text), b => BYTE_SYMBOLS[b])
}

/** mulberry32: a tiny seeded PRNG, so filler words are the same on every run. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const ONSETS = ['', 'b', 'c', 'd', 'f', 'g', 'h', 'j', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'w', 'z',
  'br', 'ch', 'cl', 'dr', 'fl', 'gr', 'pl', 'qu', 'sh', 'sp', 'st', 'th', 'tr']
const VOWELS = ['a', 'e', 'i', 'o', 'u', 'y', 'ai', 'ea', 'ee', 'io', 'oa', 'ou']
const CODAS = ['', '', 'n', 'r', 's', 't', 'l', 'm', 'nd', 'st', 'ck', 'ng', 'rt']

/** Pronounceable pseudo-words, some capitalized, most with GPT-2's leading space. */
function * fillerWords (): Generator<string> {
  const rand = prng(0x9e3779b9)
  const pick = <T>(list: T[]): T => list[Math.floor(rand() * list.length)]
  for (;;) {
    const syllables = 1 + Math.floor(rand() * 4)
    let word = ''
    for (let i = 0; i < syllables; i++) word += pick(ONSETS) + pick(VOWELS) + pick(CODAS)
    if (word === '') continue
    if (rand() < 0.2) word = word[0].toUpperCase() + word.slice(1)
    yield (rand() < 0.75 ? ' ' : '') + word
  }
}

/** Vocabulary and ordered merge list under construction. */
class BpeBuilder {
  readonly vocab = new Map<string, number>()
  readonly merges: [string, string][] = []
  readonly #mergeRank = new Map<string, number>()
  readonly #capacity: number
  readonly #reserved: Set<string>

  constructor (capacity: number, reserved: string[]) {
    this.#capacity = capacity
    this.#reserved = new Set(reserved)
  }

  get full (): boolean { return this.vocab.size >= this.#capacity }

  addToken (token: string): void {
    if (!this.vocab.has(token)) this.vocab.set(token, this.vocab.size)
  }

  /** False when the pair may not be merged (its result would shadow a special token). */
  canMerge (a: string, b: string): boolean {
    return !this.#reserved.has(a + b) && !this.#mergeRank.has(a + ' ' + b)
  }

  /** Records a merge; like the HF trainer, a result already in the vocab keeps its id. */
  addMerge (a: string, b: string): void {
    this.#mergeRank.set(a + ' ' + b, this.merges.length)
    this.merges.push([a, b])
    this.addToken(a + b)
  }

  /** Plain BPE: repeatedly merge the adjacent pair with the lowest rank. */
  encode (symbols: string[]): string[] {
    const word = symbols.slice()
    for (;;) {
      let best = -1
      let bestRank = Infinity
      for (let i = 0; i + 1 < word.length; i++) {
        const rank = this.#mergeRank.get(word[i] + ' ' + word[i + 1])
        if (rank !== undefined && rank < bestRank) { bestRank = rank; best = i }
      }
      if (best < 0) return word
      word.splice(best, 2, word[best] + word[best + 1])
    }
  }
}

/** Classic BPE training on the corpus: most frequent pair first, ties by code-unit order. */
function learnFromCorpus (bpe: BpeBuilder): void {
  const counts = new Map<string, number>()
  for (const piece of CORPUS.match(GPT2_SPLIT) ?? []) {
    const key = byteSymbols(piece).join(' ')
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  const words = [...counts].map(([key, count]) => ({ syms: key.split(' '), count }))
  const blocked = new Set<string>()
  while (!bpe.full) {
    const pairs = new Map<string, number>()
    for (const { syms, count } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = syms[i] + ' ' + syms[i + 1]
        if (!blocked.has(key)) pairs.set(key, (pairs.get(key) ?? 0) + count)
      }
    }
    let bestKey: string | undefined
    let bestCount = 0
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && bestKey !== undefined && key < bestKey)) {
        bestKey = key
        bestCount = count
      }
    }
    if (bestKey === undefined) return // every corpus word is a single token
    const [a, b] = bestKey.split(' ')
    if (!bpe.canMerge(a, b)) { blocked.add(bestKey); continue }
    bpe.addMerge(a, b)
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        if (w.syms[i] === a && w.syms[i + 1] === b) w.syms.splice(i, 2, a + b)
      }
    }
  }
}

/** Fills the rest with merges that build generated words out of existing tokens. */
function fillWithWords (bpe: BpeBuilder): void {
  let tries = 0
  for (const word of fillerWords()) {
    if (bpe.full) return
    if (++tries > 5_000_000) throw new Error('could not fill the vocabulary with filler words')
    const parts = bpe.encode(byteSymbols(word))
    // Join left to right, so each new token is a merge of two known tokens.
    let acc = parts[0]
    for (let i = 1; i < parts.length && !bpe.full; i++) {
      if (bpe.canMerge(acc, parts[i])) bpe.addMerge(acc, parts[i])
      acc += parts[i]
    }
  }
}

const CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

function addedToken (id: number, content: string, special = true) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special }
}

/** The ids config.json and generation_config.json name. */
export interface WrittenTokenizer { bosTokenId: number, eosTokenIds: number[] }

/** `chatTemplate`: the family whose template and turn markers to write (default chatml, the minimal one). */
export async function writeTokenizer (dir: string, opts: { vocabSize: number, chatTemplate?: ChatTemplateName }): Promise<WrittenTokenizer> {
  const { vocabSize } = opts
  const family = CHAT_FAMILIES[opts.chatTemplate ?? 'chatml']
  if (family == null) throw new RangeError(`unknown chat template ${JSON.stringify(opts.chatTemplate)}`)
  const CHAT_MARKERS = family.markers.map(m => m.content)
  const fixed = SPECIALS.length + 256 + CHAT_MARKERS.length
  if (!Number.isInteger(vocabSize) || vocabSize < fixed) {
    throw new RangeError(`vocabSize must be an integer >= ${fixed}, got ${vocabSize}`)
  }
  const bpe = new BpeBuilder(vocabSize - CHAT_MARKERS.length, [...SPECIALS, ...CHAT_MARKERS])
  for (const s of SPECIALS) bpe.addToken(s)
  for (const s of BYTE_SYMBOLS) bpe.addToken(s)
  learnFromCorpus(bpe)
  fillWithWords(bpe)
  for (const s of CHAT_MARKERS) bpe.addToken(s)
  if (bpe.vocab.size !== vocabSize) throw new Error(`built ${bpe.vocab.size} tokens, wanted ${vocabSize}`)

  const added = [...SPECIALS.map(s => addedToken(bpe.vocab.get(s)!, s)), ...family.markers.map(m => addedToken(bpe.vocab.get(m.content)!, m.content, m.special))]
  const bosText = family.bos ?? '<s>'
  const bos = { id: bosText, type_id: 0 }
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    // Prepends BOS when special tokens are requested, as Llama tokenizers do (Qwen's does not).
    post_processor: family.bos == null
      ? { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }
      : {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: bos }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ SpecialToken: bos }, { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bosText, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { [bosText]: { id: bosText, ids: [bpe.vocab.get(bosText)], tokens: [bosText] } }
        },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(bpe.vocab),
      // "a b" strings: byte-level symbols never contain a space, and every
      // tokenizers version reads this form.
      merges: bpe.merges.map(([a, b]) => `${a} ${b}`)
    }
  }
  const addedTokensDecoder = Object.fromEntries(added.map(t => {
    const { id, ...rest } = t
    return [String(id), rest]
  }))
  const config = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    add_bos_token: family.bos != null,
    add_eos_token: false,
    bos_token: family.bos,
    eos_token: family.eos[0],
    unk_token: '<unk>',
    additional_special_tokens: family.markers.filter(m => m.special).map(m => m.content),
    added_tokens_decoder: addedTokensDecoder,
    // Cleanup rewrites " ." to "." and would break exact round trips.
    clean_up_tokenization_spaces: false,
    chat_template: family.template ?? CHAT_TEMPLATE
  }
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer, null, 2) + '\n')
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 2) + '\n')
  return { bosTokenId: bpe.vocab.get(bosText)!, eosTokenIds: family.eos.map(e => bpe.vocab.get(e)!) }
}
