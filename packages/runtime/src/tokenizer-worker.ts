// Worker thread entry: encodes text with tokenizers built from their tokenizer.json (see TokenizerPool).
import { parentPort } from 'node:worker_threads'
import { tokenizerFromSource } from './tokenizer.ts'
import type { TextTokenizer } from './tokenizer.ts'
import type { TokenizerWorkerApi } from './tokenizer-pool.ts'
import { serveCalls, transfer } from './worker-rpc.ts'

// by the caller's key; the caller decides which to drop, so both sides agree on what is loaded
const loaded = new Map<number, TextTokenizer>()

void serveCalls<TokenizerWorkerApi>(parentPort!, () => ({
  load: ({ key, source, drop }) => {
    if (drop != null) loaded.delete(drop)
    loaded.set(key, tokenizerFromSource(source))
  },
  encode: ({ key, text, addSpecialTokens }) => {
    const tok = loaded.get(key)
    if (tok == null) throw new Error(`tokenizer ${key} is not loaded in this worker`)
    // one buffer moved back instead of a cloned array of numbers
    const ids = Uint32Array.from(tok.encode(text, { addSpecialTokens }))
    return transfer(ids, [ids.buffer])
  }
}))
