import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  initBackend, LocalModel, generate, loadTokenizer, StreamDecoder, applyChatTemplate, readTokenizerConfig, MANIFEST_FILE
} from '@plexus/runtime'
import type { BackendName, TextTokenizer, SamplingOptions } from '@plexus/runtime'

export interface GenerateArgs extends SamplingOptions {
  local: boolean
  model: string
  prompt?: string
  tokenIds?: string
  chat?: boolean
  maxTokens: number
  json: boolean
  backend?: BackendName | 'auto'
  ignoreEos?: boolean
}

export class UsageError extends Error {
  constructor (message: string) { super(message); this.name = 'UsageError' }
}

/** Token ids from `--token-ids 1,2,3`, or the prompt through the tokenizer (and chat template). */
export function promptIds (args: Pick<GenerateArgs, 'prompt' | 'tokenIds' | 'chat'>, tok: TextTokenizer | undefined, tokConfig?: Record<string, unknown>): number[] {
  if ((args.prompt == null) === (args.tokenIds == null)) throw new UsageError('give exactly one of --prompt or --token-ids')
  if (args.tokenIds != null) {
    const parts = String(args.tokenIds).split(',').map(s => s.trim())
    const ids = parts.map(Number)
    const bad = parts.find((s, i) => s === '' || !Number.isInteger(ids[i]) || ids[i] < 0)
    if (bad != null) throw new UsageError(`--token-ids: "${bad}" is not a token id (expected comma-separated non-negative integers)`)
    return ids
  }
  if (tok == null) throw new UsageError('this model has no tokenizer.json: give the prompt as --token-ids 1,2,3')
  if (args.chat === true) {
    if (tokConfig == null) throw new UsageError('--chat needs tokenizer_config.json with a chat_template')
    // The template writes its own BOS.
    return tok.encode(applyChatTemplate(tokConfig, [{ role: 'user', content: args.prompt! }], { addGenerationPrompt: true }), { addSpecialTokens: false })
  }
  return tok.encode(args.prompt!, { addSpecialTokens: true })
}

export async function runGenerate (args: GenerateArgs): Promise<void> {
  if (!args.local) throw new UsageError('generation through a swarm needs --bootstrap (not available in this build); use --local --model DIR')
  const backend = await initBackend(args.backend)
  const model = await LocalModel.load(args.model)
  try {
    const tok = await loadTokenizer(args.model)
    const ids = promptIds(args, tok, await readTokenizerConfig(args.model))
    for (const id of ids) {
      if (id >= model.config.vocabSize) throw new UsageError(`token id ${id} is outside the vocabulary (0..${model.config.vocabSize - 1})`)
    }
    const eos = args.ignoreEos === true ? [] : (tok?.eosTokenIds ?? model.config.eosTokenIds)
    const decoder = tok != null ? new StreamDecoder(tok) : undefined
    const session = await model.session(Math.min(model.config.maxPositions, ids.length + args.maxTokens))
    const write = (s: string): void => { if (!args.json && s !== '') process.stdout.write(s) }
    let first = true
    const r = await generate(model.head, session, ids, {
      maxTokens: args.maxTokens,
      temperature: args.temperature,
      topK: args.topK,
      topP: args.topP,
      seed: args.seed,
      eosTokenIds: eos,
      onToken: (id) => {
        if (decoder != null) write(decoder.push(id))
        else { write((first ? '' : ' ') + id); first = false }
      }
    })
    await session.close()
    if (decoder != null) write(decoder.flush())
    let modelId: string | undefined
    try { modelId = JSON.parse(await readFile(join(args.model, MANIFEST_FILE), 'utf8')).id } catch {}
    if (args.json) {
      process.stdout.write(JSON.stringify({
        model: args.model,
        model_id: modelId,
        backend,
        prompt_ids: ids,
        token_ids: r.tokenIds,
        text: tok != null ? tok.decode(r.tokenIds, { skipSpecialTokens: true }) : undefined,
        finish_reason: r.finishReason,
        prompt_tokens: r.promptTokens,
        completion_tokens: r.tokenIds.length,
        tokens_per_second: r.tokensPerSecond,
        prefill_tokens_per_second: r.prefillTokensPerSecond
      }) + '\n')
    } else {
      process.stdout.write('\n')
      process.stderr.write(`[${r.tokenIds.length} tokens, prefill ${r.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${r.tokensPerSecond.toFixed(1)} tok/s, backend ${backend}]\n`)
    }
  } finally {
    await model.dispose()
  }
}
