// Grammars compiled against a tokenizer's vocabulary, and the token masks they give at each step.
import type { CompiledGrammar as XCompiledGrammar, GrammarCompiler, GrammarMatcher, StructuralTagFormat } from '@mlc-ai/web-xgrammar'
import type { TokenConstraint } from '../generate.ts'
import type { TextTokenizer } from '../tokenizer.ts'
import { XgrammarInstance } from './xgrammar.ts'
import { tokenBytes, Utf8Guard } from './utf8.ts'
import { unsupportedSchemaKeyword } from './schema-support.ts'
import type { XgrammarExports } from './xgrammar.ts'

/** What the output must match. */
export type GrammarSpec =
  /** Any JSON object, on one line. */
  | { type: 'json_object' }
  /**
   * A value valid against a JSON Schema, on one line. `strict` (default true): no properties or
   * items beyond those the schema names, even where the schema would allow them. Keywords the
   * output could not be held to (allOf, not, multipleOf, bounds on non-integers, …) are refused:
   * see schema-support.ts.
   */
  | { type: 'json_schema', schema: Record<string, unknown> | boolean, strict?: boolean }
  /** A grammar in xgrammar's EBNF (GBNF-like); `root` names the start rule (default "root"). */
  | { type: 'ebnf', grammar: string, root?: string }
  /** xgrammar's structural tag (text with tagged, schema-checked parts: tool calls). */
  | { type: 'structural_tag', format: StructuralTagFormat }

export type GrammarErrorCode = 'invalid_json_schema' | 'unsupported_json_schema' | 'invalid_grammar' | 'invalid_structural_tag' | 'no_vocabulary' | 'token_rejected'

/** A spec xgrammar cannot compile, or a token a grammar does not allow; the message says why. */
export class GrammarError extends Error {
  readonly code: GrammarErrorCode
  constructor (code: GrammarErrorCode, message: string, opts?: ErrorOptions) {
    super(message, opts)
    this.name = 'GrammarError'
    this.code = code
  }
}

/** A spec compiled for one vocabulary: stateless, shared, cached; each generation takes a constraint. */
export interface CompiledGrammar {
  readonly spec: GrammarSpec
  /** A fresh matcher at the grammar's start, as a constraint for one generation (dispose it after). */
  constraint (): Promise<TokenConstraint>
}

/** Compiled grammars kept per vocabulary (least recently used dropped first). */
export const GRAMMAR_CACHE_SIZE = 64

interface Vocab {
  compiler: GrammarCompiler
  stopIds: number[]
  guard: Utf8Guard
  /** Compiled grammars by spec, least recently used first. */
  grammars: Map<string, Promise<XCompiledGrammar>>
}

/** The instance that compiles and matches, with one compiler per (tokenizer, logits size). */
interface MainInstance { inst: XgrammarInstance, vocabs: WeakMap<TextTokenizer, Map<number, Promise<Vocab>>> }

let main: Promise<MainInstance> | undefined
/** Specs are first parsed on a separate instance: a bad one aborts that one, never `main`. */
let checker: Promise<XgrammarInstance> | undefined

async function mainNow (): Promise<MainInstance> {
  main ??= XgrammarInstance.load().then(inst => ({ inst, vocabs: new WeakMap() }))
  const e = await main
  if (!e.inst.aborted) return e
  main = undefined
  return await mainNow()
}

async function checkerNow (): Promise<XgrammarInstance> {
  checker ??= XgrammarInstance.load()
  const c = await checker
  if (!c.aborted) return c
  checker = undefined
  return await checkerNow()
}

const SPEC_ERRORS = { json_object: 'invalid_json_schema', json_schema: 'invalid_json_schema', ebnf: 'invalid_grammar', structural_tag: 'invalid_structural_tag' } as const
const SPEC_NAMES = { json_object: 'JSON schema', json_schema: 'JSON schema', ebnf: 'grammar', structural_tag: 'structural tag' } as const

/** Output on one line with ", " and ": ": a sampled model cannot wander off into whitespace. */
const ANY_WHITESPACE = false
const ONE_LINE = -1

/** The spec parsed (no vocabulary needed): where a bad spec fails, naming the problem. */
async function parse (x: XgrammarExports, spec: GrammarSpec): Promise<{ toString (): string, dispose (): void }> {
  switch (spec.type) {
    // Only "an object": any properties (strict off), compact like schemas.
    case 'json_object': return await x.Grammar.fromJSONSchema(JSON.stringify({ type: 'object' }), ANY_WHITESPACE, ONE_LINE, undefined, false)
    case 'json_schema': return await x.Grammar.fromJSONSchema(JSON.stringify(spec.schema), ANY_WHITESPACE, ONE_LINE, undefined, spec.strict ?? true)
    case 'ebnf': return await x.Grammar.fromEBNF(spec.grammar, spec.root ?? 'root')
    case 'structural_tag': return await x.Grammar.fromStructuralTag({ type: 'structural_tag', format: spec.format })
    default: throw new GrammarError('invalid_grammar', `unknown grammar type ${JSON.stringify((spec as { type: unknown }).type)}`)
  }
}

/**
 * xgrammar 0.1.27 writes strings with maxLength/minLength as `[^"\\\r\n]{m,n}`, which lets raw
 * control characters through (JSON.parse rejects them): exclude them as its other strings do.
 */
const escapeControls = (ebnf: string): string => ebnf.replaceAll('[^\\"\\\\\\r\\n]', '[^\\0-\\x1f\\"\\\\\\r\\n]')

/** A JSON grammar's EBNF, repaired; other specs compile as given. */
async function compileParsed (compiler: GrammarCompiler, spec: GrammarSpec, ebnf: string | undefined): Promise<XCompiledGrammar> {
  if (ebnf != null) return await compiler.compileGrammar(ebnf, 'root')
  if (spec.type === 'ebnf') return await compiler.compileGrammar(spec.grammar, spec.root ?? 'root')
  if (spec.type === 'structural_tag') return await compiler.compileStructuralTag({ type: 'structural_tag', format: spec.format })
  throw new Error(`no EBNF for a ${spec.type} grammar`)
}

async function vocabFor (e: MainInstance, tokenizer: TextTokenizer, vocabSize: number): Promise<Vocab> {
  let bySize = e.vocabs.get(tokenizer)
  if (bySize == null) e.vocabs.set(tokenizer, bySize = new Map())
  let v = bySize.get(vocabSize)
  if (v == null) {
    v = buildVocab(e.inst, tokenizer, vocabSize)
    v.catch(() => bySize.delete(vocabSize))
    bySize.set(vocabSize, v)
  }
  return await v
}

async function buildVocab (inst: XgrammarInstance, tokenizer: TextTokenizer, vocabSize: number): Promise<Vocab> {
  if (tokenizer.vocabulary == null) throw new GrammarError('no_vocabulary', 'this tokenizer does not expose its vocabulary: grammars need every token\'s string')
  const vocab = tokenizer.vocabulary()
  // Special tokens are control tokens, never text: as '' xgrammar never allows them (the stop
  // tokens are given by id). Ids past the logits cannot be sampled; ids past the vocabulary
  // (padding rows) xgrammar masks.
  const tokens = vocab.tokens.slice(0, vocabSize)
  for (const id of vocab.specialIds) if (id < tokens.length) tokens[id] = ''
  const stopIds = tokenizer.eosTokenIds.filter(id => id < vocabSize)
  const guard = new Utf8Guard(tokenBytes({ ...vocab, tokens }))
  return await inst.capture(async x => {
    const info = await x.TokenizerInfo.createTokenizerInfo(tokens, vocab.encoding, vocab.prependSpace, vocabSize, stopIds.length > 0 ? stopIds : undefined)
    // Its own cache is unbounded: `grammars` below is the bounded one.
    const compiler = await x.GrammarCompiler.createGrammarCompiler(info, false)
    info.dispose()
    return { compiler, stopIds, guard, grammars: new Map() }
  })
}

/**
 * Compiles `spec` for `tokenizer`'s vocabulary and logits of `vocabSize` (the model config's,
 * which may exceed the tokenizer's: the extra ids are masked). Generation under it stops at the
 * tokenizer's end-of-sequence ids once the grammar is complete. Throws GrammarError when the spec
 * is invalid or unsupported (the message gives xgrammar's reason). Cached per tokenizer,
 * vocabSize and spec (the last GRAMMAR_CACHE_SIZE).
 */
export async function compileGrammar (tokenizer: TextTokenizer, vocabSize: number, spec: GrammarSpec): Promise<CompiledGrammar> {
  if (!Number.isInteger(vocabSize) || vocabSize < 1) throw new RangeError(`vocabSize must be a positive integer (got ${vocabSize})`)
  const e = await mainNow()
  const vocab = await vocabFor(e, tokenizer, vocabSize)
  const key = JSON.stringify(spec)
  let compiled = vocab.grammars.get(key)
  if (compiled != null) {
    vocab.grammars.delete(key)
  } else {
    compiled = compile(e.inst, vocab.compiler, spec)
    compiled.catch(() => vocab.grammars.delete(key))
    while (vocab.grammars.size >= GRAMMAR_CACHE_SIZE) {
      const [oldest, dropped] = vocab.grammars.entries().next().value!
      vocab.grammars.delete(oldest)
      // Matchers hold their own reference: disposing the cache's is safe while they run.
      dropped.then(g => g.dispose(), () => {})
    }
  }
  vocab.grammars.set(key, compiled)
  const grammar = await compiled
  return {
    spec,
    constraint: async () => new GrammarConstraint(
      await e.inst.x.GrammarMatcher.createGrammarMatcher(grammar, vocab.stopIds.length > 0 ? vocab.stopIds : undefined,
        // Without a stop token the grammar's end is the generation's end.
        vocab.stopIds.length === 0, UNLIMITED_ROLLBACK),
      vocabSize, vocab.guard)
  }
}

/** Parses on the checker (a bad spec throws there, naming the problem), then compiles. */
async function compile (inst: XgrammarInstance, compiler: GrammarCompiler, spec: GrammarSpec): Promise<XCompiledGrammar> {
  const json = spec.type === 'json_object' || spec.type === 'json_schema'
  const unsupported = spec.type === 'json_schema' ? unsupportedSchemaKeyword(spec.schema) : undefined
  if (unsupported != null) throw new GrammarError('unsupported_json_schema', `unsupported JSON schema: ${unsupported}`)
  const checkerInst = await checkerNow()
  let ebnf: string | undefined
  try {
    ebnf = await checkerInst.capture(async x => {
      const g = await parse(x, spec)
      try { return json ? escapeControls(g.toString()) : undefined } finally { g.dispose() }
    })
  } catch (err) {
    if (err instanceof GrammarError) throw err
    throw new GrammarError(SPEC_ERRORS[spec.type], `invalid ${SPEC_NAMES[spec.type]}: ${(err as Error).message}`, { cause: err })
  }
  try {
    return await inst.capture(async () => await compileParsed(compiler, spec, ebnf))
  } catch (err) {
    throw new GrammarError(SPEC_ERRORS[spec.type], `cannot compile the ${SPEC_NAMES[spec.type]}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * A verified session may roll back to its last confirmed position, any number of tokens back:
 * the matcher keeps its whole history (-1), a few bytes a token.
 */
const UNLIMITED_ROLLBACK = -1

/** One generation's matcher as a TokenConstraint, with the UTF-8 guard's state. */
class GrammarConstraint implements TokenConstraint {
  #disposed = false
  readonly #matcher: GrammarMatcher
  readonly #vocabSize: number
  readonly #guard: Utf8Guard
  /** The UTF-8 decoder's state before each accepted token, and now (last). */
  readonly #utf8 = [0]

  constructor (matcher: GrammarMatcher, vocabSize: number, guard: Utf8Guard) {
    this.#matcher = matcher
    this.#vocabSize = vocabSize
    this.#guard = guard
  }

  async mask (logits: Float32Array): Promise<void> {
    applyBitmask(logits, await this.#matcher.getNextTokenBitmask(), this.#vocabSize)
    this.#guard.mask(logits, this.#utf8[this.#utf8.length - 1])
  }

  accept (id: number): void {
    const next = this.#guard.after(this.#utf8[this.#utf8.length - 1], id)
    if (next < 0 || !this.#matcher.acceptToken(id)) throw new GrammarError('token_rejected', `token ${id} does not fit the grammar here`)
    this.#utf8.push(next)
  }

  rewind (count: number): void {
    const accepted = this.#utf8.length - 1
    if (count >= accepted) return
    this.#matcher.rollBack(accepted - count)
    this.#utf8.length = count + 1
  }

  done (): boolean { return this.#matcher.isTerminated() }

  /** Frees the matcher; later calls do nothing (the run and its caller may both dispose). */
  dispose (): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#matcher.dispose()
  }
}

/**
 * Sets the logits of tokens the bitmask rejects to -Infinity. Bit i of word w allows id 32w+i;
 * ids past the mask (logits wider than the vocabulary given to xgrammar) are rejected too.
 */
export function applyBitmask (logits: Float32Array, bitmask: Int32Array, vocabSize: number): void {
  const n = Math.min(logits.length, vocabSize)
  for (let w = 0; w < bitmask.length; w++) {
    const bits = bitmask[w]
    if (bits === -1) continue
    const base = w * 32
    const end = Math.min(base + 32, n)
    if (bits === 0) { logits.fill(-Infinity, base, end); continue }
    for (let id = base; id < end; id++) if ((bits & (1 << (id - base))) === 0) logits[id] = -Infinity
  }
  if (logits.length > n) logits.fill(-Infinity, n)
}
