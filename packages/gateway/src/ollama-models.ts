// Ollama's model routes beyond generation: GET /api/tags, POST /api/show, GET /api/ps (Open WebUI
// and other front ends call them to list models and read their context length and capabilities).
import type { FastifyInstance } from 'fastify'
import type { ModelConfig } from '@plexus/runtime'
import { badRequest } from './errors.ts'
import { resolveModel } from './context.ts'
import type { GatewayContext } from './context.ts'
import type { CatalogEntry } from './catalog.ts'
import type { GatewayModel } from './engine.ts'
import { asBody, optBool, optString } from './validate.ts'

/** Weights in the model (embeddings, blocks, final norm, head unless tied). */
export function parameterCount (c: ModelConfig): number {
  const q = c.numHeads * c.headDim
  const kv = c.numKvHeads * c.headDim
  const attention = c.hiddenSize * q * 2 + c.hiddenSize * kv * 2 + (c.qkvBias ? q + 2 * kv : 0)
  const mlp = 3 * c.hiddenSize * c.intermediateSize
  const block = attention + mlp + 2 * c.hiddenSize
  const embeddings = c.vocabSize * c.hiddenSize
  return embeddings * (c.tieWordEmbeddings ? 1 : 2) + c.numLayers * block + c.hiddenSize
}

/** Ollama's style: "8.0B", "494.0M", "25.1K". */
function parameterSize (n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`
  return `${(n / 1e3).toFixed(1)}K`
}

const FAMILIES: Record<ModelConfig['architecture'], string> = { LlamaForCausalLM: 'llama', MistralForCausalLM: 'llama', Qwen2ForCausalLM: 'qwen2' }

function details (entry: CatalogEntry | undefined, config?: ModelConfig): Record<string, unknown> {
  const family = config != null ? FAMILIES[config.architecture] : ''
  return {
    parent_model: '',
    format: entry?.formats?.join(',') ?? '',
    family,
    families: family === '' ? null : [family],
    parameter_size: config != null ? parameterSize(parameterCount(config)) : '',
    quantization_level: entry?.formats?.join(',') ?? ''
  }
}

function chatTemplate (m: GatewayModel): string {
  const t = m.tokenizerConfig?.chat_template
  return typeof t === 'string' ? t : ''
}

export function registerOllamaModels (app: FastifyInstance, ctx: GatewayContext): void {
  const modified = (): string => new Date(ctx.created * 1000).toISOString()

  app.get('/api/tags', async () => ({
    models: (await ctx.catalog.list()).filter(m => m.complete).map(m => ({
      name: `${m.name}:latest`,
      model: `${m.name}:latest`,
      modified_at: modified(),
      size: 0,
      digest: m.id ?? '',
      details: details(m)
    }))
  }))

  app.post('/api/show', async (request) => {
    const b = asBody(request.body)
    // `model` since Ollama 0.4; older clients send `name`
    const requested = optString(b, 'model') ?? optString(b, 'name')
    if (requested == null) throw badRequest('missing required field model')
    optBool(b, 'verbose')
    const { name, engine } = await resolveModel(ctx, requested, 'ollama')
    const m = engine.model
    const c = m.config
    const entry = (await ctx.catalog.list()).find(e => e.name === name)
    const arch = FAMILIES[c.architecture]
    const template = chatTemplate(m)
    return {
      license: '',
      modelfile: `# served by a Plexus gateway\nFROM ${name}\n`,
      parameters: '',
      template,
      details: details(entry, c),
      model_info: {
        'general.architecture': arch,
        'general.basename': name,
        'general.parameter_count': parameterCount(c),
        [`${arch}.block_count`]: c.numLayers,
        [`${arch}.context_length`]: c.maxPositions,
        [`${arch}.embedding_length`]: c.hiddenSize,
        [`${arch}.feed_forward_length`]: c.intermediateSize,
        [`${arch}.attention.head_count`]: c.numHeads,
        [`${arch}.attention.head_count_kv`]: c.numKvHeads,
        [`${arch}.attention.key_length`]: c.headDim,
        [`${arch}.attention.layer_norm_rms_epsilon`]: c.rmsNormEps,
        [`${arch}.rope.freq_base`]: c.ropeTheta,
        [`${arch}.vocab_size`]: c.vocabSize,
        ...(m.manifest != null ? { 'plexus.model_id': m.manifest.id } : {})
      },
      // a template that reads `tools` renders tool definitions
      capabilities: ['completion', ...(/\btools\b/.test(template) ? ['tools'] : [])],
      modified_at: modified()
    }
  })

  app.get('/api/ps', async () => ({
    models: (await ctx.catalog.list()).filter(m => m.loaded).map(m => ({
      name: `${m.name}:latest`,
      model: `${m.name}:latest`,
      size: 0,
      digest: m.id ?? '',
      details: details(m),
      // open until the gateway stops
      expires_at: '9999-12-31T23:59:59Z',
      size_vram: 0,
      context_length: m.contextLength ?? 0
    }))
  }))
}
