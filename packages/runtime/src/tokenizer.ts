// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json) through
// @huggingface/tokenizers, plus an incremental decoder for streaming output.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import { readTokenizerConfig, tokenContent } from './chat-template.ts'

export interface TextTokenizer {
  encode (text: string, opts?: { addSpecialTokens?: boolean }): number[]
  decode (ids: number[], opts?: { skipSpecialTokens?: boolean }): string
  readonly bosTokenId: number | undefined
  /** Every id that ends generation: tokenizer_config, generation_config.json and config.json, merged. */
  readonly eosTokenIds: number[]
  /** One past the largest id the tokenizer knows (model vocab plus added tokens). */
  readonly vocabSize: number
}

async function readJsonIfPresent (path: string): Promise<Record<string, unknown> | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new Error(`${path} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
  if (parsed == null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new Error(`${path} must hold a JSON object`)
  }
  return parsed as Record<string, unknown>
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

  constructor (tok: Tokenizer, bosTokenId: number | undefined, eosTokenIds: number[]) {
    this.#tok = tok
    this.bosTokenId = bosTokenId
    this.eosTokenIds = eosTokenIds
    // The library writes added tokens into the model vocab array by id, so its
    // length is max id + 1 even when the two overlap.
    this.vocabSize = tok.model?.vocab.length ?? tok.get_vocab().size
  }

  encode (text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids
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
  return new HfTextTokenizer(libraryTokenizer(json, config, what), ids.bos, ids.eos)
}

/**
 * Loads the tokenizer of a Hugging Face model directory. Returns undefined when
 * the directory has no tokenizer.json; throws an Error naming the file when
 * tokenizer.json (or a config beside it) cannot be parsed or understood.
 */
export async function loadTokenizer (dir: string): Promise<TextTokenizer | undefined> {
  const path = join(dir, 'tokenizer.json')
  const json = await readJsonIfPresent(path)
  if (json === undefined) return undefined
  const config = await readTokenizerConfig(dir) ?? {}
  const tok = libraryTokenizer(json, config, path)
  const generation = await readJsonIfPresent(join(dir, 'generation_config.json'))
  const modelConfig = await readJsonIfPresent(join(dir, 'config.json'))
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
  return new HfTextTokenizer(tok, bosTokenId, [...eos])
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
