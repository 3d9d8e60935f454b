import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PlexusError } from './errors.ts'

/** The shape of a decoder-only transformer, read from a Hugging Face `config.json`. */
export interface ModelConfig {
  architecture: 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM'
  modelType: string
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  headDim: number
  vocabSize: number
  maxPositions: number
  rmsNormEps: number
  ropeTheta: number
  ropeScaling?: Llama3RopeScaling
  tieWordEmbeddings: boolean
  /** q/k/v projections carry biases (Qwen2, or `attention_bias: true`). */
  qkvBias: boolean
  bosTokenId?: number
  eosTokenIds: number[]
}

export interface Llama3RopeScaling {
  type: 'llama3'
  factor: number
  lowFreqFactor: number
  highFreqFactor: number
  originalMaxPositions: number
}

/** A model's config.json that cannot be read or is not a model Plexus runs. */
export class ConfigError extends PlexusError {
  constructor (message: string) { super('model-config', message); this.name = 'ConfigError' }
}

const ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const

export async function readModelConfig (dir: string): Promise<ModelConfig> {
  const path = join(dir, 'config.json')
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err: any) {
    throw new ConfigError(`${path}: cannot read model config (${err.code ?? err.message})`)
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err: any) {
    throw new ConfigError(`${path}: invalid JSON (${err.message})`)
  }
  return parseModelConfig(raw, path)
}

/** Validates a parsed `config.json`; anything Plexus cannot run exactly is refused, naming the field. */
export function parseModelConfig (raw: unknown, source = 'config.json'): ModelConfig {
  if (raw == null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${source}: not a JSON object`)
  const c = raw as Record<string, any>
  const fail = (field: string, why: string): never => { throw new ConfigError(`${source}: ${field} ${why}`) }
  const int = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback
    if (!Number.isInteger(v) || v <= 0) fail(field, `must be a positive integer (got ${JSON.stringify(c[field])})`)
    return v
  }
  const num = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(field, `must be a positive number (got ${JSON.stringify(c[field])})`)
    return v
  }

  const archs = c.architectures
  if (!Array.isArray(archs) || archs.length !== 1) fail('architectures', 'must list exactly one architecture')
  const architecture = archs[0]
  if (!ARCHITECTURES.includes(architecture)) {
    fail('architectures', `"${architecture}" is not supported (supported: ${ARCHITECTURES.join(', ')})`)
  }
  const act = c.hidden_act ?? c.hidden_activation ?? 'silu'
  if (act !== 'silu') fail('hidden_act', `"${act}" is not supported (only silu)`)
  if (c.mlp_bias === true) fail('mlp_bias', 'true is not supported')
  // A sliding window changes which keys attend: refuse rather than silently compute something else.
  if (architecture === 'Qwen2ForCausalLM') {
    if (c.use_sliding_window === true) fail('use_sliding_window', 'true is not supported (sliding-window attention)')
  } else if (c.sliding_window != null) {
    fail('sliding_window', `${c.sliding_window} is not supported (sliding-window attention)`)
  }
  if (c.pretraining_tp != null && c.pretraining_tp !== 1) fail('pretraining_tp', `${c.pretraining_tp} is not supported`)

  const hiddenSize = int('hidden_size')
  const numHeads = int('num_attention_heads')
  const numKvHeads = int('num_key_value_heads', numHeads)
  if (numHeads % numKvHeads !== 0) fail('num_key_value_heads', `${numKvHeads} must divide num_attention_heads ${numHeads}`)
  const headDim = c.head_dim != null ? int('head_dim') : hiddenSize / numHeads
  if (!Number.isInteger(headDim)) fail('hidden_size', `${hiddenSize} is not divisible by num_attention_heads ${numHeads}`)
  if (headDim % 2 !== 0) fail('head_dim', `${headDim} must be even for rotary embeddings`)

  let ropeScaling: Llama3RopeScaling | undefined
  const rs = c.rope_scaling
  if (rs != null) {
    const type = rs.rope_type ?? rs.type
    if (type === 'default') {
      ropeScaling = undefined
    } else if (type !== 'llama3') {
      fail('rope_scaling.rope_type', `"${type}" is not supported (only llama3)`)
    } else {
      const f = (k: string): number => {
        const v = rs[k]
        if (typeof v !== 'number' || !(v > 0)) fail(`rope_scaling.${k}`, `must be a positive number (got ${JSON.stringify(v)})`)
        return v
      }
      ropeScaling = {
        type: 'llama3',
        factor: f('factor'),
        lowFreqFactor: f('low_freq_factor'),
        highFreqFactor: f('high_freq_factor'),
        originalMaxPositions: f('original_max_position_embeddings')
      }
    }
  }

  const eos = c.eos_token_id
  const eosTokenIds = eos == null ? [] : (Array.isArray(eos) ? eos : [eos])
  if (!eosTokenIds.every((x: unknown) => Number.isInteger(x))) fail('eos_token_id', 'must be an integer or a list of integers')

  return {
    architecture,
    modelType: String(c.model_type ?? ''),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions: int('max_position_embeddings', 2048),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling,
    tieWordEmbeddings: c.tie_word_embeddings === true,
    qkvBias: architecture === 'Qwen2ForCausalLM' || c.attention_bias === true,
    bosTokenId: Number.isInteger(c.bos_token_id) ? c.bos_token_id : undefined,
    eosTokenIds
  }
}

/** Hugging Face tensor names and expected shapes for one block. */
export function blockTensorShapes (cfg: ModelConfig, block: number): Map<string, number[]> {
  const p = `model.layers.${block}.`
  const q = cfg.numHeads * cfg.headDim
  const kv = cfg.numKvHeads * cfg.headDim
  const m = new Map<string, number[]>([
    [p + 'input_layernorm.weight', [cfg.hiddenSize]],
    [p + 'self_attn.q_proj.weight', [q, cfg.hiddenSize]],
    [p + 'self_attn.k_proj.weight', [kv, cfg.hiddenSize]],
    [p + 'self_attn.v_proj.weight', [kv, cfg.hiddenSize]],
    [p + 'self_attn.o_proj.weight', [cfg.hiddenSize, q]],
    [p + 'post_attention_layernorm.weight', [cfg.hiddenSize]],
    [p + 'mlp.gate_proj.weight', [cfg.intermediateSize, cfg.hiddenSize]],
    [p + 'mlp.up_proj.weight', [cfg.intermediateSize, cfg.hiddenSize]],
    [p + 'mlp.down_proj.weight', [cfg.hiddenSize, cfg.intermediateSize]]
  ])
  if (cfg.qkvBias) {
    m.set(p + 'self_attn.q_proj.bias', [q])
    m.set(p + 'self_attn.k_proj.bias', [kv])
    m.set(p + 'self_attn.v_proj.bias', [kv])
  }
  return m
}

/** The tensors a client needs: embeddings, final norm and LM head (absent when tied). */
export function headTensorShapes (cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>([
    ['model.embed_tokens.weight', [cfg.vocabSize, cfg.hiddenSize]],
    ['model.norm.weight', [cfg.hiddenSize]]
  ])
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, cfg.hiddenSize])
  return m
}
