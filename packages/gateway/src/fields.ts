// Which request fields each route takes. A field the gateway does not implement is refused with a
// 400 naming it, never silently ignored (an agent would get prose where it asked for something
// else, and never learn why). Fields that only label a request, and fields sent at the value that
// changes nothing (frequency_penalty 0, which some clients always send), are accepted.
import { badRequest } from './errors.ts'
import type { Body } from './validate.ts'

interface FieldRules {
  /** Implemented. */
  supported: string[]
  /** Bookkeeping or hints with no effect on the output: accepted and ignored. */
  ignored: string[]
  /** Not implemented, but accepted at the value that is a no-op. */
  neutral: Record<string, (v: unknown) => boolean>
}

const zero = (v: unknown): boolean => v === 0
const one = (v: unknown): boolean => v === 1
const empty = (v: unknown): boolean => v != null && typeof v === 'object' && Object.keys(v).length === 0
const isFalse = (v: unknown): boolean => v === false
const textOnly = (v: unknown): boolean => Array.isArray(v) && v.length === 1 && v[0] === 'text'

const OPENAI_COMMON = {
  ignored: ['user', 'metadata', 'store', 'service_tier', 'safety_identifier', 'prompt_cache_key'],
  neutral: { frequency_penalty: zero, presence_penalty: zero, logit_bias: empty }
}

export const FIELDS = {
  openaiChat: {
    supported: ['model', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'n', 'stream', 'stream_options', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'parallel_tool_calls', 'response_format'],
    ...OPENAI_COMMON,
    neutral: { ...OPENAI_COMMON.neutral, modalities: textOnly }
  },
  openaiCompletions: {
    supported: ['model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'n', 'stream', 'stream_options', 'logprobs', 'echo', 'suffix', 'response_format'],
    ...OPENAI_COMMON,
    neutral: { ...OPENAI_COMMON.neutral, best_of: one }
  },
  anthropicMessages: {
    supported: ['model', 'messages', 'system', 'max_tokens', 'temperature', 'top_p', 'top_k', 'stop_sequences', 'stream', 'tools', 'tool_choice'],
    ignored: ['metadata', 'service_tier'],
    neutral: { thinking: (v) => (v as { type?: unknown } | null)?.type === 'disabled' }
  },
  ollamaGenerate: {
    supported: ['model', 'prompt', 'system', 'images', 'suffix', 'format', 'options', 'stream', 'raw'],
    ignored: ['keep_alive'],
    neutral: { think: isFalse, context: (v) => Array.isArray(v) && v.length === 0 }
  },
  ollamaChat: {
    supported: ['model', 'messages', 'tools', 'tool_choice', 'format', 'options', 'stream'],
    ignored: ['keep_alive'],
    neutral: { think: isFalse }
  },
  /** Ollama's `options`: the sampling ones implemented, the machine hints meaningless for a swarm. */
  ollamaOptions: {
    supported: ['temperature', 'top_k', 'top_p', 'seed', 'stop', 'num_predict'],
    ignored: ['num_ctx', 'num_batch', 'num_gpu', 'main_gpu', 'num_thread', 'numa', 'low_vram', 'use_mmap', 'use_mlock', 'vocab_only', 'num_keep'],
    neutral: { repeat_penalty: one, presence_penalty: zero, frequency_penalty: zero, min_p: zero, typical_p: one, tfs_z: one, mirostat: zero, repeat_last_n: () => true, penalize_newline: () => true }
  }
} satisfies Record<string, FieldRules>

/** Throws a 400 naming the first field of `b` that `rules` neither implement nor may ignore. */
export function refuseUnsupported (b: Body, rules: FieldRules, prefix = ''): void {
  for (const [key, value] of Object.entries(b)) {
    if (rules.supported.includes(key) || rules.ignored.includes(key) || value === undefined) continue
    const neutral = rules.neutral[key]
    if (neutral?.(value) === true) continue
    const name = prefix === '' ? key : `${prefix}.${key}`
    const why = neutral != null ? ` (only ${describeNeutral(key)} is accepted)` : ''
    throw badRequest(`${name} is not supported by this gateway${why}; remove it from the request (supported fields: ${rules.supported.join(', ')})`, { param: name, code: 'unsupported_parameter' })
  }
}

function describeNeutral (key: string): string {
  if (['frequency_penalty', 'presence_penalty', 'min_p', 'mirostat'].includes(key)) return `${key}: 0`
  if (['repeat_penalty', 'typical_p', 'tfs_z', 'best_of'].includes(key)) return `${key}: 1`
  if (key === 'logit_bias') return 'an empty logit_bias'
  if (key === 'modalities') return 'modalities: ["text"]'
  if (key === 'thinking') return 'thinking: { type: "disabled" }'
  if (key === 'think') return 'think: false'
  return 'the default'
}
