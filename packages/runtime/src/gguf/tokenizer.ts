// A GGUF file's tokenizer (tokenizer.ggml.* metadata) as the tokenizer.json that Hugging Face's
// converters write for the same vocabulary, run by the same library as a model directory's.
import { tokenizerFromJson } from '../tokenizer.ts'
import type { TextTokenizer } from '../tokenizer.ts'
import { GgufError } from './types.ts'
import type { GgufValue } from './types.ts'
import type { GgufFile } from './reader.ts'

/** llama.cpp's token types (llama_token_type). */
const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const

/**
 * Pre-tokenizer splits by `tokenizer.ggml.pre`, as the models' own tokenizer.json files write
 * them (llama.cpp chose each name from those files). `default`/`gpt2`: GPT-2's byte-level regex.
 */
const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
const PRE_SPLITS: Record<string, string | null> = {
  default: null,
  gpt2: null,
  'gpt-2': null,
  llama3: LLAMA3_SPLIT,
  'llama-v3': LLAMA3_SPLIT,
  'llama-bpe': LLAMA3_SPLIT,
  qwen2: QWEN2_SPLIT
}

interface Vocab {
  tokens: string[]
  types: number[]
  scores?: number[]
  bos?: number
  eos: number[]
  unk?: number
  addBos: boolean
  addEos: boolean
}

function readVocab (file: GgufFile): Vocab {
  const m = file.metadata
  const fail = (key: string, why: string): never => { throw new GgufError(`${file.name}: metadata ${key} ${why}`) }
  const tokens = m.get('tokenizer.ggml.tokens')
  if (!Array.isArray(tokens) || !tokens.every(t => typeof t === 'string')) return fail('tokenizer.ggml.tokens', 'must be an array of strings')
  const numbers = (key: string): number[] | undefined => {
    const v = m.get(key)
    if (v == null) return undefined
    if (!Array.isArray(v) || v.length !== tokens.length || !v.every(x => typeof x === 'number')) fail(key, `must be an array of ${tokens.length} numbers`)
    return v as number[]
  }
  const id = (key: string): number | undefined => {
    const v = m.get(key)
    if (v == null) return undefined
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= tokens.length) return fail(key, `must be a token id below ${tokens.length} (got ${String(v)})`)
    return v
  }
  const flag = (key: string, dflt: boolean): boolean => {
    const v: GgufValue | undefined = m.get(key)
    return typeof v === 'boolean' ? v : dflt
  }
  const model = m.get('tokenizer.ggml.model')
  const eos = [id('tokenizer.ggml.eos_token_id'), id('tokenizer.ggml.eot_token_id'), id('tokenizer.ggml.eom_token_id')]
    .filter((x, i, a): x is number => x != null && a.indexOf(x) === i)
  return {
    tokens: tokens as string[],
    types: numbers('tokenizer.ggml.token_type') ?? tokens.map(() => TOKEN_TYPE.NORMAL),
    scores: numbers('tokenizer.ggml.scores'),
    bos: id('tokenizer.ggml.bos_token_id'),
    eos,
    unk: id('tokenizer.ggml.unknown_token_id'),
    // llama.cpp's defaults: SentencePiece models prepend BOS, BPE ones do not.
    addBos: flag('tokenizer.ggml.add_bos_token', model === 'llama'),
    addEos: flag('tokenizer.ggml.add_eos_token', false)
  }
}

/** Control and user-defined tokens are matched in the text before the model sees it. */
function addedTokens (v: Vocab): object[] {
  const out: object[] = []
  v.tokens.forEach((content, id) => {
    const t = v.types[id]
    if (t !== TOKEN_TYPE.CONTROL && t !== TOKEN_TYPE.USER_DEFINED && t !== TOKEN_TYPE.UNKNOWN) return
    out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t !== TOKEN_TYPE.USER_DEFINED })
  })
  return out
}

/** BOS/EOS around the text when special tokens are requested, as `add_bos_token`/`add_eos_token` say. */
function postProcessor (v: Vocab): object | null {
  const bos = v.addBos && v.bos != null ? v.tokens[v.bos] : undefined
  const eos = v.addEos && v.eos.length > 0 ? v.tokens[v.eos[0]] : undefined
  if (bos == null && eos == null) return null
  const special = (tok: string | undefined, typeId: number): object[] => tok != null ? [{ SpecialToken: { id: tok, type_id: typeId } }] : []
  const seq = (id: string, typeId: number): object => ({ Sequence: { id, type_id: typeId } })
  const specialTokens: Record<string, object> = {}
  for (const [tok, i] of [[bos, v.bos], [eos, v.eos[0]]] as const) if (tok != null) specialTokens[tok] = { id: tok, ids: [i], tokens: [tok] }
  return {
    type: 'TemplateProcessing',
    single: [...special(bos, 0), seq('A', 0), ...special(eos, 0)],
    pair: [...special(bos, 0), seq('A', 0), ...special(eos, 0), ...special(bos, 1), seq('B', 1), ...special(eos, 1)],
    special_tokens: specialTokens
  }
}

function vocabObject (tokens: string[]): Record<string, number> {
  const vocab: Record<string, number> = {}
  // The first id of a duplicated string wins, as in llama.cpp's token_to_id.
  tokens.forEach((t, i) => { if (!Object.hasOwn(vocab, t)) vocab[t] = i })
  return vocab
}

/**
 * Merges of a SentencePiece vocabulary, as transformers' SentencePieceExtractor derives them:
 * every split of a piece into two pieces of the vocabulary, the splits of higher-scored pieces
 * first (stable), within a piece by the halves' ids.
 */
export function sentencePieceMerges (tokens: string[], scores: number[]): string[] {
  const ids = new Map<string, number>()
  tokens.forEach((t, i) => { if (!ids.has(t)) ids.set(t, i) })
  const merges: Array<{ l: string, r: string, score: number, order: number }> = []
  for (const [piece, id] of ids) {
    const local: Array<{ l: string, r: string, li: number, ri: number }> = []
    const chars = Array.from(piece)
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('')
      const r = chars.slice(k).join('')
      const li = ids.get(l); const ri = ids.get(r)
      if (li != null && ri != null) local.push({ l, r, li, ri })
    }
    local.sort((a, b) => a.li - b.li || a.ri - b.ri)
    for (const x of local) merges.push({ l: x.l, r: x.r, score: scores[id], order: merges.length })
  }
  merges.sort((a, b) => b.score - a.score || a.order - b.order)
  return merges.map(x => `${x.l} ${x.r}`)
}

/** The tokenizer.json equivalent of a GGUF file's tokenizer metadata. */
export function ggufTokenizerJson (file: GgufFile): Record<string, unknown> {
  const model = file.metadata.get('tokenizer.ggml.model')
  const v = readVocab(file)
  const common = { version: '1.0', truncation: null, padding: null, added_tokens: addedTokens(v), post_processor: postProcessor(v) }
  const unkToken = v.unk != null ? v.tokens[v.unk] : undefined
  if (model === 'llama') {
    if (v.scores == null) throw new GgufError(`${file.name}: metadata tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs it)`)
    const spacePrefix = file.metadata.get('tokenizer.ggml.add_space_prefix') !== false
    // LlamaTokenizerFast's (legacy) layout: spaces are ▁, unknown characters fall back to bytes.
    return {
      ...common,
      normalizer: {
        type: 'Sequence',
        normalizers: [
          ...(spacePrefix ? [{ type: 'Prepend', prepend: '▁' }] : []),
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' }
        ]
      },
      pre_tokenizer: null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          ...(spacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [])
        ]
      },
      model: {
        type: 'BPE', dropout: null, unk_token: unkToken ?? null, continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: true, byte_fallback: true, ignore_merges: false,
        vocab: vocabObject(v.tokens), merges: sentencePieceMerges(v.tokens, v.scores)
      }
    }
  }
  if (model === 'gpt2') {
    const merges = file.metadata.get('tokenizer.ggml.merges')
    if (!Array.isArray(merges) || !merges.every(x => typeof x === 'string')) {
      throw new GgufError(`${file.name}: metadata tokenizer.ggml.merges must be an array of strings (a BPE vocabulary needs it)`)
    }
    const pre = file.metadata.get('tokenizer.ggml.pre') ?? 'default'
    const split = typeof pre === 'string' ? PRE_SPLITS[pre] : undefined
    if (split === undefined) {
      throw new GgufError(`${file.name}: metadata tokenizer.ggml.pre ${JSON.stringify(pre)} is not supported (supported: ${Object.keys(PRE_SPLITS).join(', ')}); give the prompt as token ids`)
    }
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: split == null }
    return {
      ...common,
      normalizer: null,
      pre_tokenizer: split == null
        ? byteLevel
        : { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: split }, behavior: 'Isolated', invert: false }, byteLevel] },
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: 'BPE', dropout: null, unk_token: unkToken ?? null, continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: false, byte_fallback: false,
        // Llama 3's tokenizer.json takes a pre-token found whole in the vocabulary as it is.
        ignore_merges: split === LLAMA3_SPLIT,
        vocab: vocabObject(v.tokens), merges
      }
    }
  }
  throw new GgufError(`${file.name}: metadata tokenizer.ggml.model ${JSON.stringify(model)} is not supported (supported: llama, gpt2); give the prompt as token ids`)
}

/**
 * What tokenizer_config.json would hold: the chat template and the special tokens it may use.
 * Undefined when the file has no tokenizer.
 */
export function ggufTokenizerConfig (file: GgufFile): Record<string, unknown> | undefined {
  if (!file.metadata.has('tokenizer.ggml.tokens')) return undefined
  const v = readVocab(file)
  const config: Record<string, unknown> = { add_bos_token: v.addBos, add_eos_token: v.addEos, clean_up_tokenization_spaces: false }
  if (v.bos != null) config.bos_token = v.tokens[v.bos]
  if (v.eos.length > 0) config.eos_token = v.tokens[v.eos[0]]
  if (v.unk != null) config.unk_token = v.tokens[v.unk]
  const pad = file.metadata.get('tokenizer.ggml.padding_token_id')
  if (typeof pad === 'number' && pad >= 0 && pad < v.tokens.length) config.pad_token = v.tokens[pad]
  const template = file.metadata.get('tokenizer.chat_template')
  if (typeof template === 'string') config.chat_template = template
  return config
}

/** The file's tokenizer, or undefined when it has none (`tokenizer.ggml.tokens` absent). */
export function ggufTokenizer (file: GgufFile): TextTokenizer | undefined {
  const config = ggufTokenizerConfig(file)
  if (config == null) return undefined
  const v = readVocab(file)
  return tokenizerFromJson(ggufTokenizerJson(file), config, { bos: v.bos, eos: v.eos }, `${file.name}'s tokenizer metadata`)
}
