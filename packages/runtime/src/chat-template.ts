// Chat templates as Hugging Face transformers renders them: the Jinja source
// from tokenizer_config.json (or a sibling chat_template.jinja), fed the
// messages, add_generation_prompt and the special tokens as plain strings.
import { join } from 'node:path'
import { Template } from '@huggingface/jinja'
import { readOptional, readJsonObject } from './json-file.ts'

/** A call an assistant message made; `arguments` an object, as transformers documents it. */
export interface ChatToolCall {
  id?: string
  type: 'function'
  function: { name: string, arguments: Record<string, unknown> }
}

/** A function tool in the shape Hugging Face templates read (OpenAI's). */
export interface ChatTool {
  type: 'function'
  function: { name: string, description?: string, parameters?: Record<string, unknown> }
}

export interface ChatMessage {
  role: string
  /** Absent or null for an assistant message that only calls tools. */
  content?: string | null
  tool_calls?: ChatToolCall[]
  /** On `role: 'tool'`: the call this message answers. */
  tool_call_id?: string
  /** On `role: 'tool'`: the tool's name. */
  name?: string
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean
  /** Rendered by templates that support tools; absent means no tools (the template's `tools` is undefined). */
  tools?: ChatTool[]
}

// The special-token keys transformers passes into the template context.
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']

/**
 * A token entry in tokenizer_config.json is either a plain string or, in older
 * files, a serialized AddedToken object `{ content: "<s>", ... }`.
 */
export function tokenContent (value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (value != null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content
  }
  return undefined
}

/** Picks the template source: a string, or the "default" of a named list/map. */
export function templateSource (config: Record<string, unknown>): string | undefined {
  const raw = config.chat_template
  if (typeof raw === 'string') return raw
  if (Array.isArray(raw)) {
    // transformers serializes multiple templates as [{ name, template }, ...]
    const entries = raw.filter((e): e is { name: string, template: string } =>
      e != null && typeof e === 'object' && typeof e.template === 'string')
    return (entries.find(e => e.name === 'default') ?? entries[0])?.template
  }
  if (raw != null && typeof raw === 'object') {
    const map = raw as Record<string, unknown>
    const chosen = map.default ?? Object.values(map)[0]
    return typeof chosen === 'string' ? chosen : undefined
  }
  return undefined
}

export function applyChatTemplate (
  tokenizerConfig: object,
  messages: ChatMessage[],
  opts: ChatTemplateOptions = {}
): string {
  const config = tokenizerConfig as Record<string, unknown>
  const source = templateSource(config)
  if (source === undefined) {
    throw new Error('tokenizer config has no chat_template; this model cannot format chat messages')
  }
  const context: Record<string, unknown> = {
    // Keys left undefined are dropped: templates test `'tool_calls' in message`.
    messages: messages.map(dropUndefined),
    add_generation_prompt: opts.addGenerationPrompt ?? false
  }
  if (opts.tools != null) context.tools = opts.tools
  for (const key of SPECIAL_TOKEN_KEYS) {
    const content = tokenContent(config[key])
    if (content !== undefined) context[key] = content
  }
  let template: Template
  try {
    template = new Template(source)
  } catch (err) {
    throw new Error(`chat_template does not parse: ${(err as Error).message}`, { cause: err })
  }
  return template.render(context)
}

/** Whether the model's template renders `tools` (Hugging Face's tool-use templates all read that variable). */
export function templateSupportsTools (tokenizerConfig: object): boolean {
  const source = templateSource(tokenizerConfig as Record<string, unknown>)
  return source != null && /\btools\b/.test(source)
}

function dropUndefined (m: ChatMessage): Record<string, unknown> {
  return Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined))
}


/**
 * Reads `tokenizer_config.json` from a model directory. Newer transformers
 * versions save the template separately as `chat_template.jinja`; it is folded
 * in when the JSON lacks one. Returns undefined when neither file exists.
 */
export async function readTokenizerConfig (dir: string): Promise<Record<string, unknown> | undefined> {
  let config = await readJsonObject(join(dir, 'tokenizer_config.json'))
  if (config?.chat_template === undefined) {
    const jinja = await readOptional(join(dir, 'chat_template.jinja'))
    if (jinja !== undefined) config = { ...config, chat_template: jinja }
  }
  return config
}
