// Tool calls for every API: which family's call format a model's chat template uses, the prompt
// with the request's tools, the grammar of a forced call, and generated text parsed into calls.
import { compileGrammar, templateSource, templateSupportsTools, GrammarError } from '@plexus/runtime'
import type { ChatMessage, ChatTool, GrammarSpec, TokenConstraint } from '@plexus/runtime'
import { badRequest } from '../errors.ts'
import type { Engine, RunRequest, RunResult } from '../engine.ts'
import { CallStream, parseOutput } from './call-stream.ts'
import { hermes } from './hermes.ts'
import { llama3 } from './llama3.ts'
import { mistral } from './mistral.ts'
import type { ParsedCall, ParseStep, ToolFamily, ToolRequest } from './types.ts'

export type { ParsedCall, ParseStep, ToolFamily, ToolRequest, ToolSpec, ToolChoice } from './types.ts'
export { functionTools, anthropicTools, openaiToolRequest, anthropicToolRequest } from './request.ts'
export { chatMessages, anthropicMessages } from './messages.ts'
export { CallStream, parseOutput } from './call-stream.ts'
export const FAMILIES = { hermes, llama3, mistral }

/** The call format a chat template teaches its model, from the template's own text. */
export function familyOf (tokenizerConfig: object | undefined): ToolFamily | undefined {
  const source = tokenizerConfig != null ? templateSource(tokenizerConfig as Record<string, unknown>) : undefined
  if (source == null) return undefined
  if (source.includes('<tool_call>')) return hermes
  if (source.includes('[TOOL_CALLS]')) return mistral
  if (source.includes('<|start_header_id|>') && (source.includes('"parameters"') || source.includes('<|python_tag|>'))) return llama3
  return undefined
}

const FORMATS = 'Qwen2.5/Hermes <tool_call> blocks, Llama 3.1/3.2 JSON calls, Mistral [TOOL_CALLS]'

/** The request's tools for this model: a 400 when its template cannot render them or its call format is unknown. */
export function toolsFor (engine: Engine, req: ToolRequest | undefined, param = 'tools'): ToolCalls | undefined {
  if (req == null) return undefined
  const cfg = engine.model.tokenizerConfig
  if (cfg == null || !templateSupportsTools(cfg)) {
    throw badRequest(`this model does not support tools: its chat template has no tool support (it never renders \`tools\`), so it cannot be given tools or asked for tool calls; remove ${param}`, { param, code: 'tools_not_supported' })
  }
  const family = familyOf(cfg)
  if (family == null) {
    throw badRequest(`this model's chat template renders tools, but in a call format this gateway does not parse (it parses ${FORMATS}); remove ${param}`, { param, code: 'tools_not_supported' })
  }
  return new ToolCalls(engine, family, req)
}

/**
 * Messages (and tools) through the model's chat template, as token ids. Call ids are rewritten
 * where the family's template demands a format (Mistral's 9 alphanumerics).
 */
export async function encodeChat (engine: Engine, messages: ChatMessage[], tools?: ToolCalls): Promise<number[]> {
  const family = tools?.family ?? familyOf(engine.model.tokenizerConfig)
  const rendered = family?.callId == null ? messages : messages.map(m => withCallIds(m, family.callId!))
  const chatTools: ChatTool[] | undefined = tools?.request.tools.map(t => ({
    type: 'function',
    function: { name: t.name, ...(t.description != null ? { description: t.description } : {}), parameters: t.parameters }
  }))
  return await engine.encodeChat(rendered, chatTools)
}

function withCallIds (m: ChatMessage, callId: (id: string) => string): ChatMessage {
  if (m.tool_calls == null && m.tool_call_id == null) return m
  return {
    ...m,
    ...(m.tool_calls != null ? { tool_calls: m.tool_calls.map(c => ({ ...c, id: callId(c.id ?? '') })) } : {}),
    ...(m.tool_call_id != null ? { tool_call_id: callId(m.tool_call_id) } : {})
  }
}

/** One request's tools on one model: its constraint, and its output parsed into calls. */
export class ToolCalls {
  readonly engine: Engine
  readonly family: ToolFamily
  readonly request: ToolRequest

  constructor (engine: Engine, family: ToolFamily, request: ToolRequest) {
    this.engine = engine
    this.family = family
    this.request = request
  }

  /** Whether output is parsed for calls (not with tool_choice none). */
  get parses (): boolean { return this.request.choice.mode !== 'none' }

  /**
   * The grammar of the reply: a forced call (tool_choice required or a named function) with the
   * text the reply starts with, or (auto, unless `otherGrammar`: response_format's) free text whose
   * calls must be valid; undefined otherwise.
   */
  async grammar (otherGrammar = false): Promise<{ prefix: string, constraint: TokenConstraint } | undefined> {
    const { choice, tools } = this.request
    let prefix: string | undefined
    let spec: Record<string, unknown>
    if (choice.mode === 'required' || choice.mode === 'function') {
      ({ prefix, spec } = this.family.forcedCall(choice.mode === 'function' ? tools.filter(t => t.name === choice.name) : tools))
    } else if (choice.mode === 'auto' && !otherGrammar && this.family.lazyCalls != null) {
      spec = this.family.lazyCalls(tools, this.request.parallel)
    } else {
      return undefined
    }
    try {
      const grammar = await compileGrammar(this.engine.tokenizer, this.engine.model.config.vocabSize, spec as GrammarSpec)
      return { prefix: prefix ?? '', constraint: await grammar.constraint() }
    } catch (err) {
      if (err instanceof GrammarError) throw badRequest(`cannot build the grammar of these tools' calls: ${err.message}`, { param: 'tools' })
      throw err
    }
  }

  /**
   * Runs a generation under the calls' grammar (if any) and parses its output. With
   * `run.onChunk` (streaming), onChunk gets the content only, and `onCalls` each call once complete.
   */
  async run (run: RunRequest, onCalls?: (calls: ParsedCall[], firstIndex: number) => void | Promise<void>): Promise<ToolRun> {
    let forced: Awaited<ReturnType<ToolCalls['grammar']>>
    try {
      forced = await this.grammar(run.constraint != null)
    } catch (err) {
      run.constraint?.dispose?.()
      throw err
    }
    // A forced call's grammar wins over response_format's (which then is not used).
    if (forced != null && run.constraint != null) run.constraint.dispose?.()
    const constraint = forced?.constraint ?? run.constraint
    if (forced != null && forced.prefix !== '') {
      // The reply's opening text is part of the prompt; the context still has to hold the reply.
      let prefixIds: number[]
      try {
        prefixIds = await this.engine.encode(this.engine.tokenizer, forced.prefix, false)
      } catch (err) {
        forced.constraint.dispose?.()
        throw err
      }
      const promptIds = [...run.promptIds, ...prefixIds]
      run = { ...run, promptIds, maxTokens: Math.max(1, Math.min(run.maxTokens, this.engine.contextLength - promptIds.length)) }
    }
    const prefix = forced?.prefix ?? ''
    try {
      if (run.onChunk == null) {
        const result = await this.engine.run({ ...run, constraint })
        return { result, ...this.parse(prefix + result.text) }
      }
      const onChunk = run.onChunk
      const parser = this.stream()
      parser.push(prefix)
      const calls: ParsedCall[] = []
      let content = ''
      const take = async (step: ParseStep, token?: Parameters<typeof onChunk>[0]['token']): Promise<void> => {
        content += step.content
        if (step.content !== '' || token != null) await onChunk({ text: step.content, token })
        if (step.calls.length > 0) {
          await onCalls?.(step.calls, calls.length)
          calls.push(...step.calls)
        }
      }
      const result = await this.engine.run({ ...run, constraint, onChunk: async (c) => { await take(parser.push(c.text), c.token) } })
      await take(parser.finish())
      return { result, content: calls.length > 0 && content === '' ? null : content, calls }
    } finally {
      forced?.constraint.dispose?.()
    }
  }

  /** The whole output as content (null when only calls) and calls. */
  parse (text: string): { content: string | null, calls: ParsedCall[] } {
    if (!this.parses) return { content: text, calls: [] }
    const r = parseOutput(this.family.syntax, text)
    return { ...r, calls: this.#limit(r.calls, 0) }
  }

  /** An incremental parser: push each piece of text, then finish. */
  stream (): { push: (text: string) => ParseStep, finish: () => ParseStep } {
    if (!this.parses) return { push: (content) => ({ content, calls: [] }), finish: () => ({ content: '', calls: [] }) }
    const s = new CallStream(this.family.syntax)
    let emitted = 0
    const limited = (step: ParseStep): ParseStep => {
      const calls = this.#limit(step.calls, emitted)
      emitted += calls.length
      return { content: step.content, calls }
    }
    return { push: (text) => limited(s.push(text)), finish: () => limited(s.finish()) }
  }

  /** Without parallel_tool_calls, only the first call counts. */
  #limit (calls: ParsedCall[], before: number): ParsedCall[] {
    return this.request.parallel ? calls : calls.slice(0, Math.max(0, 1 - before))
  }
}

export interface ToolRun {
  result: RunResult
  /** The text outside calls; null when the output was only calls. */
  content: string | null
  calls: ParsedCall[]
}
