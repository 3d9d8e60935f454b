// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json) through
// @huggingface/tokenizers, plus an incremental decoder for streaming output.
import { join } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import { readTokenizerConfig, tokenContent } from './chat-template.ts'
import { readJsonObject } from './json-file.ts'

export interface TextTokenizer {
  encode (text: string, opts?: { addSpecialTokens?: boolean }): number[]
  decode (ids: number[], opts?: { skipSpecialTokens?: boolean }): string
  readonly bosTokenId: number | undefined
  /** Every id that ends generation: tokenizer_config, generation_config.json and config.json, merged. */
  readonly eosTokenIds: number[]
  /** One past the largest id the tokenizer knows (model vocab plus added tokens). */
  readonly vocabSize: number
  /** Every token's stored string, by id (what a grammar engine needs to mask logits); absent when unknown. */
  vocabulary? (): TokenVocabulary
  /** What it was built from, so another thread can build the same tokenizer (absent: it encodes only here). */
  source? (): TokenizerSource
}

/** A tokenizer as data: tokenizerFromSource builds one that encodes exactly as the original. */
export interface TokenizerSource {
  json: Record<string, unknown>
  config: Record<string, unknown>
  bos: number | undefined
  eos: number[]
  what: string
}

/** How a vocabulary's stored strings spell bytes: xgrammar's vocabulary types. */
export type VocabularyEncoding = 'byte_level' | 'byte_fallback' | 'raw'

/** A tokenizer's tokens as tokenizer.json stores them. */
export interface TokenVocabulary {
  /** By id: model vocabulary plus added tokens; '' for ids the file does not define. */
  tokens: string[]
  /** Ids of the special added tokens (control tokens such as `<s>`: never text). */
  specialIds: number[]
  /** byte_level: GPT-2 byte symbols (`Ġ`); byte_fallback: SentencePiece `▁` and `<0xNN>`; raw: plain text. */
  encoding: VocabularyEncoding
  /** The tokenizer puts a space (`▁`) before the text it encodes (older SentencePiece models). */
  prependSpace: boolean
}


/** eos_token_id / bos_token_id may be a number or a list of numbers. */
function idList (value: unknown): number[] {
  if (Number.isInteger(value)) return [value as number]
  if (Array.isArray(value)) return value.filter((v): v is number => Number.isInteger(v))
  return []
}

class HfTextTokenizer implements TextTokenizer {
  readonly bosTokenId: number | undefined
  readonly eosTokenIds: number[]
  readonly vocabSize: number
  readonly #tok: Tokenizer
  /** The tokenizer.json it was built from (for `vocabulary()`). */
  readonly #json: Record<string, unknown> | undefined
  readonly #config: Record<string, unknown>
  readonly #what: string
  #vocabulary: TokenVocabulary | undefined

  constructor (tok: Tokenizer, bosTokenId: number | undefined, eosTokenIds: number[], json: Record<string, unknown> | undefined, config: Record<string, unknown>, what: string) {
    this.#tok = tok
    this.#json = json
    this.#config = config
    this.#what = what
    this.bosTokenId = bosTokenId
    this.eosTokenIds = eosTokenIds
    // The library writes added tokens into the model vocab array by id, so its
    // length is max id + 1 even when the two overlap.
    this.vocabSize = tok.model?.vocab.length ?? tok.get_vocab().size
  }

  encode (text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids
  }

  vocabulary (): TokenVocabulary {
    if (this.#json == null) throw new Error('this tokenizer was built without its tokenizer.json: no vocabulary to read')
    this.#vocabulary ??= vocabularyOf(this.#json)
    return this.#vocabulary
  }

  source (): TokenizerSource {
    if (this.#json == null) throw new Error('this tokenizer was built without its tokenizer.json: it cannot be copied to another thread')
    return { json: this.#json, config: this.#config, bos: this.bosTokenId, eos: this.eosTokenIds, what: this.#what }
  }

  decode (ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    // Like the Rust tokenizers, ids the vocabulary lacks (a model's padded
    // embedding rows) decode to nothing rather than failing the stream.
    const known = ids.filter(id => this.#tok.id_to_token(id) !== undefined)
    // The library throws on an empty list; an empty sequence is just "".
    if (known.length === 0) return ''
    return this.#tok.decode(known, { skip_special_tokens: opts.skipSpecialTokens ?? false })
  }
}

/** The library's tokenizer from a tokenizer.json object; `what` names its source in errors. */
function libraryTokenizer (json: Record<string, unknown>, config: Record<string, unknown>, what: string): Tokenizer {
  // The library insists these keys exist (null is fine) and iterates
  // added_tokens unguarded; files written by other tools may omit them.
  const normalized: Record<string, unknown> = {
    normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json
  }
  normalized.added_tokens ??= []
  try {
    if (normalized.model == null || typeof normalized.model !== 'object') throw new Error('no "model" object')
    return new Tokenizer(normalized, config)
  } catch (err) {
    throw new Error(`${what} is not a usable tokenizer: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * A tokenizer from an in-memory tokenizer.json equivalent (e.g. one built from GGUF metadata),
 * with its BOS and end-of-generation ids given. `what` names the source in errors.
 */
export function tokenizerFromJson (json: Record<string, unknown>, config: Record<string, unknown>, ids: { bos?: number, eos: number[] }, what: string): TextTokenizer {
  return new HfTextTokenizer(libraryTokenizer(json, config, what), ids.bos, ids.eos, json, config, what)
}

/** The tokenizer a TokenizerSource describes (in a worker thread, say). */
export function tokenizerFromSource (src: TokenizerSource): TextTokenizer {
  return tokenizerFromJson(src.json, src.config, { bos: src.bos, eos: src.eos }, src.what)
}

/**
 * Loads the tokenizer of a Hugging Face model directory. Returns undefined when
 * the directory has no tokenizer.json; throws an Error naming the file when
 * tokenizer.json (or a config beside it) cannot be parsed or understood.
 */
export async function loadTokenizer (dir: string): Promise<TextTokenizer | undefined> {
  const path = join(dir, 'tokenizer.json')
  const json = await readJsonObject(path)
  if (json === undefined) return undefined
  const config = await readTokenizerConfig(dir) ?? {}
  const tok = libraryTokenizer(json, config, path)
  const generation = await readJsonObject(join(dir, 'generation_config.json'))
  const modelConfig = await readJsonObject(join(dir, 'config.json'))
  const idOf = (key: string): number | undefined => {
    const content = tokenContent(config[key])
    return content === undefined ? undefined : tok.token_to_id(content)
  }

  const bosTokenId = idOf('bos_token') ??
    idList(generation?.bos_token_id)[0] ?? idList(modelConfig?.bos_token_id)[0]
  const eos = new Set<number>()
  const configEos = idOf('eos_token')
  if (configEos !== undefined) eos.add(configEos)
  for (const id of idList(generation?.eos_token_id)) eos.add(id)
  for (const id of idList(modelConfig?.eos_token_id)) eos.add(id)
  return new HfTextTokenizer(tok, bosTokenId, [...eos], json, config, path)
}

type JsonObject = Record<string, unknown>
const isObject = (v: unknown): v is JsonObject => v != null && typeof v === 'object' && !Array.isArray(v)

/** A component (decoder, normalizer, pre-tokenizer) and, for a Sequence, the ones inside it. */
function components (c: unknown): JsonObject[] {
  if (!isObject(c)) return []
  const inner = [c.decoders, c.normalizers, c.pretokenizers].find(Array.isArray) as unknown[] | undefined
  return [c, ...(inner ?? []).flatMap(components)]
}

/**
 * The id-indexed vocabulary of a tokenizer.json, with the encoding of its strings detected as
 * xgrammar does from a Hugging Face tokenizer: from the decoder first, then the model.
 */
export function vocabularyOf (json: JsonObject): TokenVocabulary {
  const model = isObject(json.model) ? json.model : {}
  const tokens: string[] = []
  if (Array.isArray(model.vocab)) {
    // Unigram: [piece, score] pairs in id order
    model.vocab.forEach((entry, id) => { tokens[id] = Array.isArray(entry) ? String(entry[0]) : '' })
  } else if (isObject(model.vocab)) {
    for (const [token, id] of Object.entries(model.vocab)) if (Number.isInteger(id)) tokens[id as number] = token
  }
  const specialIds: number[] = []
  for (const t of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    if (!isObject(t) || !Number.isInteger(t.id) || typeof t.content !== 'string') continue
    tokens[t.id as number] = t.content
    if (t.special === true) specialIds.push(t.id as number)
  }
  for (let i = 0; i < tokens.length; i++) tokens[i] ??= ''

  const types = (c: unknown): string[] => components(c).map(x => String(x.type))
  const decoder = types(json.decoder)
  const encoding: VocabularyEncoding = decoder.includes('ByteLevel')
    ? 'byte_level'
    : decoder.includes('ByteFallback') || model.byte_fallback === true
      ? 'byte_fallback'
      : types(json.pre_tokenizer).includes('ByteLevel') ? 'byte_level' : 'raw'
  const prepends = components(json.normalizer).some(n => n.type === 'Prepend' && n.prepend === '▁') ||
    components(json.pre_tokenizer).some(p => p.type === 'Metaspace' &&
      (p.prepend_scheme === 'always' || p.prepend_scheme === 'first' || (p.prepend_scheme == null && p.add_prefix_space === true)))
  return { tokens, specialIds, encoding, prependSpace: prepends }
}

/**
 * Turns a stream of generated ids into text deltas. Decodes a short window of
 * recent ids (the tokens since the last emitted boundary, plus the text they
 * already produced as context) so the cost per token stays constant, and holds
 * text back while it ends in U+FFFD: a multi-byte character whose bytes span
 * several tokens has not been completed yet.
 */
export class StreamDecoder {
  readonly #tok: TextTokenizer
  readonly #skipSpecialTokens: boolean
  #ids: number[] = []
  #prefixOffset = 0
  #readOffset = 0

  constructor (tok: TextTokenizer, opts: { skipSpecialTokens?: boolean } = {}) {
    this.#tok = tok
    this.#skipSpecialTokens = opts.skipSpecialTokens ?? false
  }

  /** Adds one id; returns the text it completes (possibly ""). */
  push (id: number): string {
    this.#ids.push(id)
    const opts = { skipSpecialTokens: this.#skipSpecialTokens }
    const prefixText = this.#tok.decode(this.#ids.slice(this.#prefixOffset, this.#readOffset), opts)
    const newText = this.#tok.decode(this.#ids.slice(this.#prefixOffset), opts)
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      this.#prefixOffset = this.#readOffset
      this.#readOffset = this.#ids.length
      // Drop ids that can no longer influence output, keeping offsets relative.
      this.#ids = this.#ids.slice(this.#prefixOffset)
      this.#readOffset -= this.#prefixOffset
      this.#prefixOffset = 0
      return newText.slice(prefixText.length)
    }
    return ''
  }

  /** Returns whatever is still held back (e.g. a truncated character as U+FFFD). */
  flush (): string {
    const opts = { skipSpecialTokens: this.#skipSpecialTokens }
    const prefixText = this.#tok.decode(this.#ids.slice(this.#prefixOffset, this.#readOffset), opts)
    const newText = this.#tok.decode(this.#ids.slice(this.#prefixOffset), opts)
    this.#ids = []
    this.#prefixOffset = 0
    this.#readOffset = 0
    return newText.length > prefixText.length ? newText.slice(prefixText.length) : ''
  }
}
