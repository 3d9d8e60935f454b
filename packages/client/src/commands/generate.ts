import { initBackend, generate, StreamDecoder, renderChatTemplate, DraftModel, PromptLookupDrafter, UsageError } from '@plexus/runtime'
import type { TextTokenizer, Drafter } from '@plexus/runtime'
import { createLog, progressReporter, progressStyle, quantizeFormat } from '@plexus/p2p'
import type { AuditEvent } from '../inference/auditor.ts'
import { openLocal, openSwarm, connectSwarm, swarmModelDir, stopNode } from '../model-source.ts'
import type { OpenModel } from '../model-source.ts'
import type { GenerateArgs } from '../cli-options.ts'

export type { GenerateArgs }

/** Token ids from `--token-ids 1,2,3`, or the prompt through the tokenizer (and chat template). */
export async function promptIds (args: Pick<GenerateArgs, 'prompt' | 'tokenIds' | 'chat'>, tok: TextTokenizer | undefined, tokConfig?: Record<string, unknown>): Promise<number[]> {
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
    return tok.encode(await renderChatTemplate(tokConfig, [{ role: 'user', content: args.prompt! }], { addGenerationPrompt: true }), { addSpecialTokens: false })
  }
  return tok.encode(args.prompt!, { addSpecialTokens: true })
}

export async function runGenerate (args: GenerateArgs): Promise<void> {
  if (args.local === (args.bootstrap != null && args.bootstrap.length > 0)) {
    throw new UsageError('give either --local (run every block here) or --bootstrap <multiaddr> (run through a swarm)')
  }
  const clientLog = createLog('client')
  const log = (m: string): void => { clientLog.info(m) }
  // progress on stderr: as JSON lines with --json, so stdout keeps only the result
  const onProgress = progressReporter({ log: clientLog, style: progressStyle({ json: args.json }) })
  const backend = await initBackend(args.backend, { note: log })
  const quantize = quantizeFormat(args.quantize)
  const node = args.local ? undefined : await connectSwarm(args.bootstrap!)
  let model: OpenModel | undefined
  const audits: AuditEvent[] = []
  try {
    model = node == null
      ? await openLocal(args.model, { quantize, onProgress })
      : await openSwarm(node, {
        dir: await swarmModelDir(node, args.model, { cacheDir: args.cacheDir, onProgress }),
        quantize,
        dtype: args.wireDtype,
        forward: args.forward,
        onProgress,
        trust: args.trust,
        checkRate: args.checkRate,
        checkEvery: args.checkEvery,
        trustedVerifiers: args.trustVerifier,
        onAudit: e => { audits.push(e) }
      })
    await generateWith(model, args, backend, log, audits)
  } finally {
    await model?.close()
    if (node != null) await stopNode(node)
  }
}

async function generateWith (model: OpenModel, args: GenerateArgs, backend: string, log: (m: string) => void, audits: AuditEvent[]): Promise<void> {
  const { config, tokenizer: tok } = model
  const ids = await promptIds(args, tok, model.tokenizerConfig)
  for (const id of ids) {
    if (id >= config.vocabSize) throw new UsageError(`token id ${id} is outside the vocabulary (0..${config.vocabSize - 1})`)
  }
  const maxLength = Math.min(config.maxPositions, ids.length + args.maxTokens)
  const draftModel = args.speculate != null && args.draftModel != null ? await DraftModel.load(args.draftModel, { blocks: args.draftBlocks }) : undefined
  let drafter: Drafter | undefined
  try {
    if (args.speculate != null) drafter = draftModel != null ? await draftModel.drafter(maxLength, config.vocabSize) : new PromptLookupDrafter()
    await generateThrough(model, args, backend, log, audits, ids, maxLength, drafter)
  } finally {
    await drafter?.close()
    await draftModel?.dispose()
  }
}

async function generateThrough (model: OpenModel, args: GenerateArgs, backend: string, log: (m: string) => void, audits: AuditEvent[], ids: number[], maxLength: number, drafter: Drafter | undefined): Promise<void> {
  const { config, tokenizer: tok } = model
  const eos = args.ignoreEos === true ? [] : (tok?.eosTokenIds ?? config.eosTokenIds)
  const decoder = tok != null ? new StreamDecoder(tok) : undefined
  const session = await model.session(maxLength)
  const routeText = session.route?.map(h => `${h.peer.slice(-8)}[${h.start},${h.end})`).join(' → ')
  if (routeText != null) log(`route: ${routeText}`)
  const write = (s: string): void => { if (!args.json && s !== '') process.stdout.write(s) }
  let first = true
  let r
  try {
    r = await generate(model.head, session, ids, {
      maxTokens: args.maxTokens,
      temperature: args.temperature,
      topK: args.topK,
      topP: args.topP,
      seed: args.seed,
      eosTokenIds: eos,
      speculative: drafter != null ? { drafter, k: args.speculate! } : undefined,
      onToken: (id) => {
        if (decoder != null) write(decoder.push(id))
        else { write((first ? '' : ' ') + id); first = false }
      }
    })
  } finally {
    await session.close()
  }
  if (decoder != null) write(decoder.flush())
  const finalRoute = session.route?.map(h => ({ peer: h.peer, start: h.start, end: h.end }))
  if (args.json) {
    process.stdout.write(JSON.stringify({
      model: args.model,
      model_id: model.manifest?.id,
      backend,
      route: finalRoute,
      prompt_ids: ids,
      token_ids: r.tokenIds,
      text: tok != null ? tok.decode(r.tokenIds, { skipSpecialTokens: true }) : undefined,
      finish_reason: r.finishReason,
      prompt_tokens: r.promptTokens,
      completion_tokens: r.tokenIds.length,
      tokens_per_second: r.tokensPerSecond,
      prefill_tokens_per_second: r.prefillTokensPerSecond,
      trust: args.trust ?? 'fast',
      ...(r.speculation != null ? { speculation: { drafter: r.speculation.drafter, k: args.speculate, drafted: r.speculation.drafted, accepted: r.speculation.accepted, acceptance_rate: r.speculation.acceptanceRate, target_steps: r.speculation.targetSteps, final_k: r.speculation.finalK } } : {}),
      ...(args.trust === 'verified' ? { verification: summarizeAudits(audits) } : {})
    }) + '\n')
  } else {
    process.stdout.write('\n')
    process.stderr.write(`[${r.tokenIds.length} tokens, prefill ${r.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${r.tokensPerSecond.toFixed(1)} tok/s, backend ${backend}]\n`)
    if (r.speculation != null) process.stderr.write(`[speculative (${r.speculation.drafter}): ${r.speculation.accepted} of ${r.speculation.drafted} drafts accepted (${(100 * r.speculation.acceptanceRate).toFixed(0)}%), ${r.speculation.targetSteps} steps through the blocks for ${Math.max(0, r.tokenIds.length - 1)} tokens]\n`)
    if (args.trust === 'verified') {
      const v = summarizeAudits(audits)
      process.stderr.write(`[verified: ${v.checked_steps} steps re-computed in ${v.checks} checks, max error ${v.max_error.toExponential(2)}; ${v.frauds.length} wrong outputs caught and re-run]\n`)
    }
  }
}

function summarizeAudits (audits: AuditEvent[]): { checks: number, checked_steps: number, max_error: number, frauds: Array<{ server: string, verifier: string, bad_step: number, error: number, confirmed_by: string[] }> } {
  let checks = 0
  let steps = 0
  let maxError = 0
  const frauds = []
  for (const e of audits) {
    if (e.kind === 'checked') { checks++; steps += e.steps; maxError = Math.max(maxError, e.maxError) } else frauds.push({ server: e.server, verifier: e.verifier, bad_step: e.badStep, error: e.error, confirmed_by: e.confirmedBy })
  }
  return { checks, checked_steps: steps, max_error: maxError, frauds }
}
