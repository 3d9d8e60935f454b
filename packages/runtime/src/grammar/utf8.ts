// Keeping constrained output valid UTF-8. xgrammar 0.1.27 matches non-ASCII characters loosely at
// the byte level: overlong forms, surrogates, bytes past U+10FFFF and stray continuation bytes all
// pass its character classes, and decode to U+FFFD (so a string can break its schema's maxLength).
// This guard tracks the UTF-8 decoder's state across tokens and masks the tokens that would make
// the bytes ill-formed.
import type { TokenVocabulary } from '../tokenizer.ts'

/**
 * States of a UTF-8 decoder (Unicode's table 3-7 of well-formed sequences): 0 between characters;
 * 1, 2: one or two continuation bytes (80–BF) to go; 3: after E0 (A0–BF next); 4: after ED
 * (80–9F); 5: after F0 (90–BF); 6: after F1–F3 (80–BF); 7: after F4 (80–8F). -1: ill-formed.
 */
export function utf8Step (state: number, b: number): number {
  switch (state) {
    case 0:
      if (b < 0x80) return 0
      if (b >= 0xc2 && b <= 0xdf) return 1
      if (b === 0xe0) return 3
      if (b === 0xed) return 4
      if (b >= 0xe1 && b <= 0xef) return 2
      if (b === 0xf0) return 5
      if (b >= 0xf1 && b <= 0xf3) return 6
      if (b === 0xf4) return 7
      return -1
    case 1: return b >= 0x80 && b <= 0xbf ? 0 : -1
    case 2: return b >= 0x80 && b <= 0xbf ? 1 : -1
    case 3: return b >= 0xa0 && b <= 0xbf ? 1 : -1
    case 4: return b >= 0x80 && b <= 0x9f ? 1 : -1
    case 5: return b >= 0x90 && b <= 0xbf ? 2 : -1
    case 6: return b >= 0x80 && b <= 0xbf ? 2 : -1
    case 7: return b >= 0x80 && b <= 0x8f ? 2 : -1
    default: return -1
  }
}

const utf8 = new TextEncoder()

/** GPT-2's byte symbols back to bytes, by char code (printable bytes are themselves, the rest from U+0100 up); -1: not a symbol. */
function byteLevelTable (): Int16Array {
  const table = new Int16Array(0x200).fill(-1)
  let shifted = 0
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
    table[printable ? b : 256 + shifted++] = b
  }
  return table
}

/** A byte-level token's bytes; undefined when it holds a char that is not a byte symbol. */
function byteLevelBytes (t: string, table: Int16Array): Uint8Array | undefined {
  const out = new Uint8Array(t.length)
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i)
    const b = c < table.length ? table[c] : -1
    if (b < 0) return undefined
    out[i] = b
  }
  return out
}

/** The bytes a token stands for, as xgrammar decodes the vocabulary. */
export function tokenBytes (vocab: TokenVocabulary): Uint8Array[] {
  const special = new Set(vocab.specialIds)
  const table = vocab.encoding === 'byte_level' ? byteLevelTable() : undefined
  return vocab.tokens.map((t, id) => {
    if (special.has(id) || t === '') return new Uint8Array(0)
    // an added token stored as plain text is its UTF-8
    if (table != null) return byteLevelBytes(t, table) ?? utf8.encode(t)
    if (vocab.encoding === 'byte_fallback') {
      const hex = /^<0x([0-9A-Fa-f]{2})>$/.exec(t)
      if (hex != null) return Uint8Array.of(parseInt(hex[1], 16))
      return utf8.encode(t.replaceAll('▁', ' '))
    }
    return utf8.encode(t)
  })
}

/** Which tokens may follow each UTF-8 decoder state, and the state each leaves. */
export class Utf8Guard {
  readonly #bytes: Uint8Array[]
  /**
   * Per state, the shorter of two lists: the ids that may not follow it (`misfit`: masked one by
   * one), or the ids that may (the row is cleared and those restored). Between characters few
   * tokens misfit; inside a character few fit.
   */
  readonly #lists: Array<{ misfit: boolean, ids: Int32Array }> = []

  constructor (bytes: Uint8Array[]) {
    this.#bytes = bytes
    for (let s = 0; s < 8; s++) {
      const fit: number[] = []
      const misfit: number[] = []
      for (let id = 0; id < bytes.length; id++) (this.after(s, id) >= 0 ? fit : misfit).push(id)
      this.#lists.push(misfit.length <= fit.length ? { misfit: true, ids: Int32Array.from(misfit) } : { misfit: false, ids: Int32Array.from(fit) })
    }
  }

  /** The state after token `id` from `state` (-1: ill-formed). */
  after (state: number, id: number): number {
    const b = this.#bytes[id]
    if (b == null) return state
    for (let i = 0; i < b.length && state >= 0; i++) state = utf8Step(state, b[i])
    return state
  }

  /** Masks the tokens that cannot follow `state` (ids past the vocabulary are left to the grammar's mask). */
  mask (logits: Float32Array, state: number): void {
    const { misfit, ids } = this.#lists[state]
    if (misfit) {
      for (let i = 0; i < ids.length; i++) if (ids[i] < logits.length) logits[ids[i]] = -Infinity
      return
    }
    const kept = new Float32Array(ids.length)
    for (let i = 0; i < ids.length; i++) kept[i] = logits[ids[i]]
    logits.fill(-Infinity, 0, Math.min(logits.length, this.#bytes.length))
    for (let i = 0; i < ids.length; i++) if (ids[i] < logits.length) logits[ids[i]] = kept[i]
  }
}
