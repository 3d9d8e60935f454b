import { parseModelConfig } from '../config.ts'
import type { ModelConfig } from '../config.ts'
import { GgufError } from './types.ts'
import type { GgufValue } from './types.ts'
import type { GgufFile } from './reader.ts'

/** GGUF architectures Plexus runs, and the Hugging Face architecture each one is. */
export const GGUF_ARCHITECTURES: Record<string, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM'
}

/**
 * The model's config from GGUF metadata, validated by the same parseModelConfig as a
 * config.json: the metadata is turned into the Hugging Face config it came from.
 */
export async function readGgufConfig (file: GgufFile): Promise<ModelConfig> {
  const freqs = file.tensors.has('rope_freqs.weight') ? await file.readFloat32('rope_freqs.weight') : undefined
  return parseModelConfig(ggufToHfConfig(file, freqs), file.name)
}

export function ggufToHfConfig (file: GgufFile, ropeFreqs?: Float32Array): Record<string, unknown> {
  const m = file.metadata
  const fail = (key: string, why: string): never => { throw new GgufError(`${file.name}: metadata ${key} ${why}`) }
  const arch = m.get('general.architecture')
  if (typeof arch !== 'string') return fail('general.architecture', 'is missing')
  if (GGUF_ARCHITECTURES[arch] == null) {
    return fail('general.architecture', `"${arch}" is not supported (supported: ${Object.keys(GGUF_ARCHITECTURES).join(', ')})`)
  }
  const get = (key: string): GgufValue | undefined => m.get(`${arch}.${key}`)
  /** A number, or a per-layer array whose entries all agree (Plexus has one shape for every block). */
  const num = (key: string): number | undefined => {
    let v = get(key)
    if (Array.isArray(v)) {
      const first = v[0]
      if (v.length === 0 || !v.every(x => x === first)) fail(`${arch}.${key}`, 'varies per layer, which is not supported')
      v = first
    }
    if (v == null) return undefined
    if (typeof v !== 'number') return fail(`${arch}.${key}`, `must be a number (got ${String(v)})`)
    return v
  }
  const required = (key: string): number => num(key) ?? fail(`${arch}.${key}`, 'is missing')

  const hidden = required('embedding_length')
  const heads = required('attention.head_count')
  const embd = file.tensors.get('token_embd.weight')
  if (embd == null) throw new GgufError(`${file.name}: tensor token_embd.weight is missing from the file`)
  const vocab = embd.shape[0]
  const vocabKey = num('vocab_size')
  if (vocabKey != null && vocabKey !== vocab) fail(`${arch}.vocab_size`, `${vocabKey} does not match token_embd.weight's ${vocab} rows`)
  const keyLength = num('attention.key_length')
  const valueLength = num('attention.value_length')
  if (keyLength != null && valueLength != null && keyLength !== valueLength) {
    fail(`${arch}.attention.value_length`, `${valueLength} differs from key_length ${keyLength}, which is not supported`)
  }
  const headDim = keyLength ?? hidden / heads
  const ropeDims = num('rope.dimension_count')
  if (ropeDims != null && ropeDims !== headDim) fail(`${arch}.rope.dimension_count`, `${ropeDims} is not the head size ${headDim} (partial rotary is not supported)`)

  const hf: Record<string, unknown> = {
    architectures: [GGUF_ARCHITECTURES[arch]],
    model_type: arch,
    hidden_size: hidden,
    intermediate_size: required('feed_forward_length'),
    num_hidden_layers: required('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: num('attention.head_count_kv') ?? heads,
    vocab_size: vocab,
    tie_word_embeddings: !file.tensors.has('output.weight'),
    attention_bias: file.tensors.has('blk.0.attn_q.bias')
  }
  if (keyLength != null) hf.head_dim = keyLength
  const ctx = num('context_length')
  if (ctx != null) hf.max_position_embeddings = ctx
  const eps = num('attention.layer_norm_rms_epsilon')
  if (eps != null) hf.rms_norm_eps = shortestFloat32(eps)
  const theta = num('rope.freq_base')
  if (theta != null) hf.rope_theta = shortestFloat32(theta)
  // A sliding window is passed on so that parseModelConfig refuses it, as for a config.json.
  const window = num('attention.sliding_window')
  if (window != null && window > 0) {
    if (arch === 'qwen2') hf.use_sliding_window = true
    else hf.sliding_window = window
  }

  const scalingType = get('rope.scaling.type')
  const scalingFactor = num('rope.scaling.factor')
  if ((scalingType != null && scalingType !== 'none') || (scalingFactor != null && scalingFactor !== 1)) {
    fail(`${arch}.rope.scaling.type`, `"${String(scalingType ?? 'linear')}" is not supported (llama3 scaling travels as rope_freqs.weight)`)
  }
  if (ropeFreqs != null) {
    hf.rope_scaling = llama3ScalingFromFactors(file.name, ropeFreqs, headDim, theta ?? 10000, num('rope.scaling.original_context_length'))
  }

  const tok = (key: string): number | undefined => { const v = m.get(`tokenizer.ggml.${key}`); return typeof v === 'number' ? v : undefined }
  const bos = tok('bos_token_id')
  if (bos != null) hf.bos_token_id = bos
  // llama.cpp stops at any end-of-generation token: eos, and eot / eom where the file names them.
  const eos = [tok('eos_token_id'), tok('eot_token_id'), tok('eom_token_id')].filter((x, i, a): x is number => x != null && a.indexOf(x) === i)
  if (eos.length > 0) hf.eos_token_id = eos.length === 1 ? eos[0] : eos
  return hf
}

/** The shortest decimal that is the same float32: the value the f32 metadata was written from. */
export function shortestFloat32 (x: number): number {
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p))
    if (Math.fround(y) === Math.fround(x)) return y
  }
  return x
}

/**
 * llama.cpp carries llama3 rope scaling as per-frequency divisors (rope_freqs.weight). Recover
 * Hugging Face's parameters from them: in the interpolated band 1/f = (1 − s)/factor + s with
 * s = (orig/wavelen − low)/(high − low), linear in 1/wavelen; two band points fix the line.
 * The result is checked by recomputing every divisor.
 */
export function llama3ScalingFromFactors (file: string, f: Float32Array, headDim: number, theta: number, orig?: number): Record<string, number | string> {
  const fail = (why: string): never => { throw new GgufError(`${file}: tensor rope_freqs.weight: ${why}`) }
  if (f.length !== headDim / 2) fail(`${f.length} values, expected head size / 2 = ${headDim / 2}`)
  const factor = shortestFloat32(Math.max(...f))
  if (!(factor > 1)) fail('holds no scaling factor above 1 (not llama3 scaling)')
  const invWavelen = (i: number): number => 1 / (2 * Math.PI * theta ** (2 * i / headDim))
  const band: Array<[number, number]> = []
  for (let i = 0; i < f.length; i++) {
    if (f[i] !== 1 && Math.fround(factor) !== f[i]) band.push([invWavelen(i), (1 / f[i] - 1 / factor) / (1 - 1 / factor)])
  }
  if (band.length < 2) fail('too few interpolated frequencies to recover llama3 rope scaling')
  const [[x0, s0], [x1, s1]] = [band[0], band[band.length - 1]]
  const slope = (s1 - s0) / (x1 - x0) // = orig / (high − low)
  const offset = slope * x0 - s0 // = low / (high − low)
  // Without the original context length, assume low_freq_factor 1 (every llama3 release uses it).
  const o = orig ?? Math.round(slope / offset)
  const low = shortestFloat32(offset * o / slope)
  const high = shortestFloat32(low + o / slope)
  const scaling = { rope_type: 'llama3', factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: o }
  for (let i = 0; i < f.length; i++) {
    const wavelen = 1 / invWavelen(i)
    let expect = 1
    if (wavelen > o / low) expect = factor
    else if (wavelen >= o / high) { const s = (o / wavelen - low) / (high - low); expect = 1 / ((1 - s) / factor + s) }
    if (Math.abs(expect - f[i]) > 1e-5 * Math.abs(expect)) fail(`value ${i} (${f[i]}) is not llama3 scaling's ${expect} for ${JSON.stringify(scaling)}`)
  }
  return scaling
}
