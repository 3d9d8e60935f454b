// Makes a random-weight Hugging Face model directory (deterministic per seed), optionally with a GGUF copy.
import { parseArgs } from 'node:util'
import { makeModel, SHAPES } from './lib/model-maker.ts'
import { CHAT_TEMPLATE_NAMES } from './lib/chat-templates.ts'
import type { ChatTemplateName } from './lib/chat-templates.ts'
import type { ShapeName, WeightDType } from './lib/model-maker.ts'
import type { GgufDType } from './lib/gguf.ts'

const HELP = `usage: node_modules/.bin/node scripts/make-model.ts --shape SHAPE --out DIR [options]

Writes config.json, generation_config.json, tokenizer files and safetensors weights
with random values that depend only on the seed (same seed => byte-identical files).

  --shape NAME        ${Object.entries(SHAPES).map(([k, s]) => `${k} (hidden ${s.hiddenSize}, ${s.numLayers} layers, ${s.numHeads}/${s.numKvHeads} heads, FFN ${s.intermediateSize}, vocab ${s.vocabSize})`).join('\n                      ')}
  --out DIR           output directory (created; old weights in it are replaced)
  --dtype f32|bf16|f16  weight storage type (default f32)
  --seed N            random seed, 0..4294967295 (default 0)
  --shards K          split weights into K files plus model.safetensors.index.json (default 1)
  --arch llama|qwen2  LlamaForCausalLM (default) or Qwen2ForCausalLM (q/k/v biases)
  --layers N          override the shape's layer count
  --vocab N           override the shape's vocabulary size
  --tie               tie the LM head to the embeddings
  --chat-template chatml|qwen2|llama3|mistral
                      chat template and its special tokens: a minimal ChatML one (default), or
                      Qwen2.5-Instruct's, Llama-3.1-Instruct's or Mistral-7B-Instruct-v0.3's (with tools)
  --gguf              also write DIR/model.gguf for llama.cpp
  --gguf-dtype f32|f16|q8_0|q4_k
                      GGUF weight type (default f16 for --dtype f16, else f32); q8_0 and q4_k
                      quantize every matrix, embeddings and output included, with llama.cpp's
                      quantizers (rows not whole blocks fall back: q4_k → q8_0 → f16)
  --workers N         threads generating weights (default: all cores; output does not depend on it)
  -h, --help          show this help`

function fail (msg: string): never {
  process.stderr.write(`make-model: ${msg}\n(run with --help for usage)\n`)
  process.exit(2)
}

function intArg (name: string, v: string | undefined): number | undefined {
  if (v == null) return undefined
  if (!/^\d+$/.test(v)) fail(`--${name} must be a non-negative integer (got ${JSON.stringify(v)})`)
  return Number(v)
}

let args
try {
  args = parseArgs({
    options: {
      shape: { type: 'string' },
      out: { type: 'string' },
      dtype: { type: 'string', default: 'f32' },
      seed: { type: 'string' },
      shards: { type: 'string' },
      arch: { type: 'string', default: 'llama' },
      layers: { type: 'string' },
      vocab: { type: 'string' },
      tie: { type: 'boolean', default: false },
      'chat-template': { type: 'string', default: 'chatml' },
      gguf: { type: 'boolean', default: false },
      'gguf-dtype': { type: 'string' },
      workers: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false }
    },
    strict: true,
    allowPositionals: false
  }).values
} catch (err: any) {
  fail(err.message)
}

if (args.help) {
  process.stdout.write(HELP + '\n')
  process.exit(0)
}
if (args.shape == null) fail('--shape is required')
if (!(args.shape in SHAPES)) fail(`unknown --shape ${JSON.stringify(args.shape)} (known: ${Object.keys(SHAPES).join(', ')})`)
if (args.out == null) fail('--out is required')
if (!['f32', 'bf16', 'f16'].includes(args.dtype)) fail(`--dtype must be f32, bf16 or f16 (got ${JSON.stringify(args.dtype)})`)
if (args.arch !== 'llama' && args.arch !== 'qwen2') fail(`--arch must be llama or qwen2 (got ${JSON.stringify(args.arch)})`)
if (!CHAT_TEMPLATE_NAMES.includes(args['chat-template'] as ChatTemplateName)) fail(`--chat-template must be ${CHAT_TEMPLATE_NAMES.join(', ')} (got ${JSON.stringify(args['chat-template'])})`)
const ggufDtype = args['gguf-dtype']
if (ggufDtype != null && !['f32', 'f16', 'q8_0', 'q4_k'].includes(ggufDtype)) fail(`--gguf-dtype must be f32, f16, q8_0 or q4_k (got ${JSON.stringify(ggufDtype)})`)
if (ggufDtype != null && !args.gguf) fail('--gguf-dtype needs --gguf')

const started = performance.now()
try {
  await makeModel({
    shape: args.shape as ShapeName,
    out: args.out,
    dtype: args.dtype as WeightDType,
    seed: intArg('seed', args.seed),
    shards: intArg('shards', args.shards),
    arch: args.arch,
    layers: intArg('layers', args.layers),
    vocab: intArg('vocab', args.vocab),
    tie: args.tie,
    chatTemplate: args['chat-template'] as ChatTemplateName,
    gguf: args.gguf ? (ggufDtype != null ? { dtype: ggufDtype as GgufDType } : true) : false,
    workers: intArg('workers', args.workers)
  })
} catch (err: any) {
  process.stderr.write(`make-model: ${err.message}\n`)
  process.exit(1)
}
process.stdout.write(`wrote ${args.out} (${args.shape}, ${args.dtype}) in ${((performance.now() - started) / 1000).toFixed(1)} s\n`)
