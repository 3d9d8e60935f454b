import { open, readFile } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { Checkpoint } from '@plexus/runtime'
import type { ModelConfig } from '@plexus/runtime'
import { fileExists } from '@plexus/runtime'
import { ggufNameOf } from '@plexus/runtime'
import { f32ToF16 } from '@plexus/runtime'
import { quantizeQ8_0, quantizeQ4_K } from '@plexus/runtime'

// GGUF v3 as llama.cpp reads it: header, metadata key/values, tensor infos, then aligned data.
const ALIGN = 32
const T = { UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const
const GGML_F32 = 0
const GGML_F16 = 1
const GGML_Q8_0 = 8
const GGML_Q4_K = 12
/** Values per q8_0 block: one f16 scale then 32 int8s (34 bytes). */
const QK8_0 = 32
const Q8_0_BLOCK_BYTES = 2 + QK8_0
/** Values per q4_K super-block (144 bytes). */
const QK_K = 256
const Q4_K_BLOCK_BYTES = 144
/** llama.cpp's `general.file_type` (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_K_S). */
const FILE_TYPE = { f32: 0, f16: 1, q8_0: 7, q4_k: 14 } as const
export type GgufDType = keyof typeof FILE_TYPE
// llama.cpp's token types.
const TOK = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const

type Value =
  | { t: 'u32', v: number } | { t: 'i32', v: number } | { t: 'f32', v: number } | { t: 'bool', v: boolean } | { t: 'str', v: string }
  | { t: 'arr_str', v: string[] } | { t: 'arr_i32', v: number[] } | { t: 'arr_f32', v: number[] }

/** Growable little-endian byte buffer for the header. */
class Bytes {
  buf = Buffer.alloc(1 << 16)
  len = 0
  private room (n: number): void {
    if (this.len + n <= this.buf.length) return
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n))
    this.buf.copy(next, 0, 0, this.len)
    this.buf = next
  }

  u32 (v: number): void { this.room(4); this.buf.writeUInt32LE(v, this.len); this.len += 4 }
  i32 (v: number): void { this.room(4); this.buf.writeInt32LE(v, this.len); this.len += 4 }
  u64 (v: number): void { this.room(8); this.buf.writeBigUInt64LE(BigInt(v), this.len); this.len += 8 }
  f32 (v: number): void { this.room(4); this.buf.writeFloatLE(v, this.len); this.len += 4 }
  u8 (v: number): void { this.room(1); this.buf[this.len++] = v }
  str (s: string): void {
    const b = Buffer.from(s, 'utf8')
    this.u64(b.length)
    this.room(b.length)
    b.copy(this.buf, this.len)
    this.len += b.length
  }

  value (val: Value): void {
    switch (val.t) {
      case 'u32': this.u32(T.UINT32); this.u32(val.v); break
      case 'i32': this.u32(T.INT32); this.i32(val.v); break
      case 'f32': this.u32(T.FLOAT32); this.f32(val.v); break
      case 'bool': this.u32(T.BOOL); this.u8(val.v ? 1 : 0); break
      case 'str': this.u32(T.STRING); this.str(val.v); break
      case 'arr_str': this.u32(T.ARRAY); this.u32(T.STRING); this.u64(val.v.length); for (const s of val.v) this.str(s); break
      case 'arr_i32': this.u32(T.ARRAY); this.u32(T.INT32); this.u64(val.v.length); for (const x of val.v) this.i32(x); break
      case 'arr_f32': this.u32(T.ARRAY); this.u32(T.FLOAT32); this.u64(val.v.length); for (const x of val.v) this.f32(x); break
    }
  }
}

interface GgufTensor {
  ggufName: string
  /** ggml order: innermost dimension first (the reverse of the HF shape). */
  dims: number[]
  type: number
  offset: number
  bytes: number
  load: () => Promise<Float32Array>
}

/**
 * Writes a Hugging Face model directory as a GGUF file that llama.cpp loads, with the same
 * weights: q/k rows permuted into llama.cpp's rotary layout (llama only), 1-D tensors kept f32.
 */
export async function writeGguf (modelDir: string, outPath: string, opts: { dtype?: GgufDType, quantizeHead?: boolean } = {}): Promise<void> {
  const dtype = opts.dtype ?? 'f32'
  if (!(dtype in FILE_TYPE)) throw new Error(`gguf: dtype must be f32, f16, q8_0 or q4_k (got ${JSON.stringify(dtype)})`)
  // false: token embeddings and output stay f32, as `--quantize` leaves them (only the blocks' matrices change).
  const quantizeHead = opts.quantizeHead ?? true
  const ckpt = await Checkpoint.open(modelDir)
  try {
    const cfg = ckpt.config
    const arch = cfg.architecture === 'Qwen2ForCausalLM' ? 'qwen2' : 'llama'
    const kv: [string, Value][] = [
      ['general.architecture', { t: 'str', v: arch }],
      ['general.name', { t: 'str', v: modelName(modelDir) }],
      ['general.alignment', { t: 'u32', v: ALIGN }],
      ['general.file_type', { t: 'u32', v: FILE_TYPE[dtype] }],
      ...archMetadata(arch, cfg),
      ...await tokenizerMetadata(modelDir, cfg)
    ]

    const tensors: GgufTensor[] = []
    let offset = 0
    const add = (ggufName: string, hfShape: number[], load: () => Promise<Float32Array>): void => {
      // Norms, biases and rope factors stay f32 as convert_hf_to_gguf.py keeps them; a matrix whose
      // rows are not whole blocks of the format falls back (q4_k → q8_0 → f16), as llama.cpp does.
      const matrix = hfShape.length > 1
      const head = ggufName === 'token_embd.weight' || ggufName === 'output.weight'
      const cols = hfShape[hfShape.length - 1]
      const quant = dtype === 'q8_0' || dtype === 'q4_k'
      const type = !matrix || dtype === 'f32' || (head && quant && !quantizeHead)
        ? GGML_F32
        : dtype === 'q4_k' && cols % QK_K === 0 ? GGML_Q4_K
          : quant && cols % QK8_0 === 0 ? GGML_Q8_0 : GGML_F16
      const n = hfShape.reduce((a, b) => a * b, 1)
      const bytes = type === GGML_Q4_K ? n / QK_K * Q4_K_BLOCK_BYTES
        : type === GGML_Q8_0 ? n / QK8_0 * Q8_0_BLOCK_BYTES : n * (type === GGML_F16 ? 2 : 4)
      tensors.push({ ggufName, dims: [...hfShape].reverse(), type, offset, bytes, load })
      offset = alignUp(offset + bytes)
    }
    const hf = (name: string, shape: number[], permuteHeads?: number): void => {
      add(ggufTensorName(name), shape, async () => {
        const data = await ckpt.readFloat32(name, shape)
        return permuteHeads == null ? data : permuteRotary(data, shape, permuteHeads)
      })
    }
    const q = cfg.numHeads * cfg.headDim
    const kvDim = cfg.numKvHeads * cfg.headDim
    const perm = arch === 'llama'
    hf('model.embed_tokens.weight', [cfg.vocabSize, cfg.hiddenSize])
    if (cfg.ropeScaling != null) {
      const factors = llama3RopeFactors(cfg)
      add('rope_freqs.weight', [factors.length], async () => factors)
    }
    for (let b = 0; b < cfg.numLayers; b++) {
      const p = `model.layers.${b}.`
      hf(p + 'input_layernorm.weight', [cfg.hiddenSize])
      hf(p + 'self_attn.q_proj.weight', [q, cfg.hiddenSize], perm ? cfg.numHeads : undefined)
      hf(p + 'self_attn.k_proj.weight', [kvDim, cfg.hiddenSize], perm ? cfg.numKvHeads : undefined)
      hf(p + 'self_attn.v_proj.weight', [kvDim, cfg.hiddenSize])
      if (cfg.qkvBias) {
        hf(p + 'self_attn.q_proj.bias', [q], perm ? cfg.numHeads : undefined)
        hf(p + 'self_attn.k_proj.bias', [kvDim], perm ? cfg.numKvHeads : undefined)
        hf(p + 'self_attn.v_proj.bias', [kvDim])
      }
      hf(p + 'self_attn.o_proj.weight', [cfg.hiddenSize, q])
      hf(p + 'post_attention_layernorm.weight', [cfg.hiddenSize])
      hf(p + 'mlp.gate_proj.weight', [cfg.intermediateSize, cfg.hiddenSize])
      hf(p + 'mlp.up_proj.weight', [cfg.intermediateSize, cfg.hiddenSize])
      hf(p + 'mlp.down_proj.weight', [cfg.hiddenSize, cfg.intermediateSize])
    }
    hf('model.norm.weight', [cfg.hiddenSize])
    // Tied models have no output tensor: llama.cpp falls back to token_embd.
    if (!cfg.tieWordEmbeddings) hf('lm_head.weight', [cfg.vocabSize, cfg.hiddenSize])

    const head = new Bytes()
    head.u32(0x46554747) // "GGUF"
    head.u32(3)
    head.u64(tensors.length)
    head.u64(kv.length)
    for (const [k, v] of kv) { head.str(k); head.value(v) }
    for (const t of tensors) {
      head.str(t.ggufName)
      head.u32(t.dims.length)
      for (const d of t.dims) head.u64(d)
      head.u32(t.type)
      head.u64(t.offset)
    }
    const headerBytes = alignUp(head.len)
    const fh = await open(outPath, 'w')
    try {
      await writeAll(fh, head.buf.subarray(0, head.len), 0)
      for (const t of tensors) {
        const data = await t.load()
        const out = t.type === GGML_F16 ? f32ToF16(data) : t.type === GGML_Q8_0 ? quantizeQ8_0(data) : t.type === GGML_Q4_K ? quantizeQ4_K(data) : data
        const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength)
        if (bytes.length !== t.bytes) throw new Error(`gguf: tensor ${t.ggufName}: ${bytes.length} bytes, expected ${t.bytes}`)
        await writeAll(fh, bytes, headerBytes + t.offset)
      }
      // The last tensor's padding: llama.cpp checks every tensor's data lies inside the file.
      await fh.truncate(headerBytes + offset)
    } finally {
      await fh.close()
    }
  } finally {
    await ckpt.close()
  }
}

function archMetadata (arch: string, cfg: ModelConfig): [string, Value][] {
  const u = (v: number): Value => ({ t: 'u32', v })
  return [
    [`${arch}.vocab_size`, u(cfg.vocabSize)],
    [`${arch}.context_length`, u(cfg.maxPositions)],
    [`${arch}.embedding_length`, u(cfg.hiddenSize)],
    [`${arch}.block_count`, u(cfg.numLayers)],
    [`${arch}.feed_forward_length`, u(cfg.intermediateSize)],
    [`${arch}.attention.head_count`, u(cfg.numHeads)],
    [`${arch}.attention.head_count_kv`, u(cfg.numKvHeads)],
    // Written always: llama.cpp's default (hidden / heads) is wrong when head_dim is explicit.
    [`${arch}.attention.key_length`, u(cfg.headDim)],
    [`${arch}.attention.value_length`, u(cfg.headDim)],
    [`${arch}.rope.dimension_count`, u(cfg.headDim)],
    [`${arch}.attention.layer_norm_rms_epsilon`, { t: 'f32', v: cfg.rmsNormEps }],
    [`${arch}.rope.freq_base`, { t: 'f32', v: cfg.ropeTheta }],
    // llama3 scaling travels as the rope_freqs tensor; a scaling.factor key would make llama.cpp
    // apply linear scaling on top, so only the informational original length is written.
    ...(cfg.ropeScaling != null ? [[`${arch}.rope.scaling.original_context_length`, u(cfg.ropeScaling.originalMaxPositions)] as [string, Value]] : [])
  ]
}

/** Per-frequency divisors llama.cpp applies (`rope_freqs`), equal to HF's llama3 inv_freq rescaling. */
export function llama3RopeFactors (cfg: ModelConfig): Float32Array {
  const rs = cfg.ropeScaling
  if (rs == null) throw new Error('llama3RopeFactors: the config has no rope_scaling')
  const half = cfg.headDim / 2
  const out = new Float32Array(half)
  const lowWavelen = rs.originalMaxPositions / rs.lowFreqFactor
  const highWavelen = rs.originalMaxPositions / rs.highFreqFactor
  for (let i = 0; i < half; i++) {
    const freq = 1 / cfg.ropeTheta ** (2 * i / cfg.headDim)
    const wavelen = 2 * Math.PI / freq
    if (wavelen < highWavelen) out[i] = 1
    else if (wavelen > lowWavelen) out[i] = rs.factor
    else {
      const smooth = (rs.originalMaxPositions / wavelen - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor)
      out[i] = 1 / ((1 - smooth) / rs.factor + smooth)
    }
  }
  return out
}

/**
 * HF stores each head's rotary pairs as (first half, second half); llama.cpp's rope pairs
 * adjacent rows. Row h·d + 2j + t takes old row h·d + t·d/2 + j (convert_hf_to_gguf's permute).
 */
export function permuteRotary (data: Float32Array, shape: number[], heads: number): Float32Array {
  const rows = shape[0]
  const cols = shape.length > 1 ? shape[1] : 1
  const d = rows / heads
  if (!Number.isInteger(d) || d % 2 !== 0) throw new Error(`gguf: cannot permute ${rows} rows into ${heads} heads of even size`)
  const out = new Float32Array(data.length)
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < d / 2; j++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * d + t * d / 2 + j) * cols
        out.set(data.subarray(src, src + cols), (h * d + 2 * j + t) * cols)
      }
    }
  }
  return out
}

/** The GGUF name of a Hugging Face tensor (the runtime's reader maps it back). */
export function ggufTensorName (hf: string): string {
  const name = ggufNameOf(hf)
  if (name == null) throw new Error(`gguf: no GGUF name for tensor ${hf}`)
  return name
}

/** Tokenizer keys: the model's byte-level BPE when it has a tokenizer.json, else placeholder tokens. */
async function tokenizerMetadata (dir: string, cfg: ModelConfig): Promise<[string, Value][]> {
  const ids = (unk: number | undefined, addBos = false): [string, Value][] => [
    ['tokenizer.ggml.bos_token_id', { t: 'u32', v: cfg.bosTokenId ?? 1 }],
    ['tokenizer.ggml.eos_token_id', { t: 'u32', v: cfg.eosTokenIds[0] ?? 2 }],
    ...(unk != null ? [['tokenizer.ggml.unknown_token_id', { t: 'u32', v: unk }] as [string, Value]] : []),
    // Placeholder vocabularies: callers feed token ids, nothing is prepended behind their back.
    ['tokenizer.ggml.add_bos_token', { t: 'bool', v: addBos }]
  ]
  const path = join(dir, 'tokenizer.json')
  if (!(await fileExists(path))) return [...placeholderVocab(cfg.vocabSize), ...ids(0)]
  let tok: any
  try {
    tok = JSON.parse(await readFile(path, 'utf8'))
  } catch (err: any) {
    throw new Error(`${path}: invalid JSON (${err.message})`)
  }
  const model = tok?.model
  if (model?.type !== 'BPE' || model.vocab == null || !Array.isArray(model.merges)) {
    throw new Error(`${path}: only BPE tokenizers (model.vocab + model.merges) can be written to GGUF (got ${JSON.stringify(model?.type)})`)
  }
  const tokens: (string | undefined)[] = new Array(cfg.vocabSize)
  const types: number[] = new Array(cfg.vocabSize).fill(TOK.NORMAL)
  const put = (content: string, id: unknown, type: number): void => {
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= cfg.vocabSize) {
      throw new Error(`${path}: token ${JSON.stringify(content)} has id ${JSON.stringify(id)} outside the model's vocab_size ${cfg.vocabSize}`)
    }
    tokens[id as number] = content
    types[id as number] = type
  }
  for (const [content, id] of Object.entries(model.vocab)) put(content, id, TOK.NORMAL)
  for (const a of tok.added_tokens ?? []) put(a.content, a.id, a.special === true ? TOK.CONTROL : TOK.USER_DEFINED)
  // Embedding rows beyond the tokenizer (padded vocabularies) get unused filler tokens.
  for (let i = 0; i < tokens.length; i++) if (tokens[i] == null) { tokens[i] = `[PAD${i}]`; types[i] = TOK.UNUSED }
  const merges = (model.merges as unknown[]).map(m => Array.isArray(m) ? m.join(' ') : String(m))
  const unk = model.unk_token != null ? model.vocab[model.unk_token] : undefined
  // tokenizer_config.json: whether text gets a BOS, and the chat template (as convert_hf_to_gguf.py writes them)
  const config = await readJsonIfPresent(join(dir, 'tokenizer_config.json'))
  const template = typeof config?.chat_template === 'string' ? [['tokenizer.chat_template', { t: 'str', v: config.chat_template }] as [string, Value]] : []
  return [
    ['tokenizer.ggml.model', { t: 'str', v: 'gpt2' }],
    ['tokenizer.ggml.pre', { t: 'str', v: 'default' }],
    ['tokenizer.ggml.tokens', { t: 'arr_str', v: tokens as string[] }],
    ['tokenizer.ggml.token_type', { t: 'arr_i32', v: types }],
    ['tokenizer.ggml.merges', { t: 'arr_str', v: merges }],
    ...ids(Number.isInteger(unk) ? unk : undefined, config?.add_bos_token === true),
    ...template
  ]
}

/**
 * A SentencePiece-style vocabulary of unique placeholder tokens: <unk>, <s>, </s>, then (as far as
 * vocab_size allows) "▁" and printable ASCII so plain text round-trips, byte tokens, and fillers.
 */
function placeholderVocab (n: number): [string, Value][] {
  const tokens = ['<unk>', '<s>', '</s>']
  const types: number[] = [TOK.UNKNOWN, TOK.CONTROL, TOK.CONTROL]
  const push = (tok: string, type: number): void => { if (tokens.length < n) { tokens.push(tok); types.push(type) } }
  push('▁', TOK.NORMAL)
  for (let c = 0x21; c < 0x7f; c++) push(String.fromCharCode(c), TOK.NORMAL)
  for (let b = 0; b < 256; b++) push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, TOK.BYTE)
  while (tokens.length < n) push(`▁t${tokens.length}`, TOK.NORMAL)
  tokens.length = n
  types.length = n
  const scores = types.map((t, i) => t === TOK.NORMAL ? -i : 0)
  return [
    ['tokenizer.ggml.model', { t: 'str', v: 'llama' }],
    ['tokenizer.ggml.tokens', { t: 'arr_str', v: tokens }],
    ['tokenizer.ggml.scores', { t: 'arr_f32', v: scores }],
    ['tokenizer.ggml.token_type', { t: 'arr_i32', v: types }]
  ]
}

async function readJsonIfPresent (path: string): Promise<Record<string, any> | undefined> {
  if (!(await fileExists(path))) return undefined
  try {
    return JSON.parse(await readFile(path, 'utf8'))
  } catch (err: any) {
    throw new Error(`${path}: invalid JSON (${err.message})`)
  }
}

function modelName (dir: string): string {
  return dir.replace(/[\\/]+$/, '').split(/[\\/]/).pop() ?? 'model'
}

function alignUp (n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN
}

async function writeAll (fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done)
    done += bytesWritten
  }
}
