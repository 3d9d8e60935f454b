// The runtime's public surface: what the other packages, the scripts and the swarm suites use.
// The package's own tests import its sources by path (packages/runtime/test).
export { postedError, PlexusError, UsageError } from './errors.ts'
export { parseTrust, TRUST_LEVELS, TrustError } from './trust.ts'
export type { TrustLevel, SupportedTrust } from './trust.ts'
export { readModelConfig, parseModelConfig, blockTensorShapes, headTensorShapes, ConfigError } from './config.ts'
export type { ModelConfig } from './config.ts'
export { toFloat32, fileExists, DTYPE_BYTES, CheckpointError, SafetensorsFile } from './safetensors.ts'
export type { DType } from './safetensors.ts'
export { f32ToBf16Bits, f32ToF16Bits, f32ToBf16, f32ToF16 } from './dtype.ts'
export { rawFloat32, Checkpoint } from './checkpoint.ts'
export type { RawTensor } from './checkpoint.ts'
export { openModel } from './model-source.ts'
export type { ModelSource } from './model-source.ts'
export { initBackend, BACKENDS, BackendError } from './backend.ts'
export type { BackendName } from './backend.ts'
export { mlpChunkRows, mlpChunking } from './block.ts'
export { collectStepGarbage } from './memory.ts'
export { KVCache, Span, SpanError } from './span.ts'
export { ModelHead } from './head.ts'
export { seededRandom, argmax, logSoftmax, validateSampling, rankByLogit, Sampler } from './sampling.ts'
export type { SamplingOptions } from './sampling.ts'
export { generate, concatFloat32 } from './generate.ts'
export type { SessionPipeline, Confirmation, TokenConstraint, GenerateResult } from './generate.ts'
export { MAX_SPECULATE } from './speculative.ts'
export { SpeculativeError, PromptLookupDrafter, DraftModel } from './drafters.ts'
export type { Drafter } from './drafters.ts'
export { blockBytes, loadSpanRunners, CPU_QUANT_FORMATS, WASM_HEAP_BUDGET, LocalModel } from './local.ts'
export type { LocalModelOptions } from './local.ts'
export {
  fileDigest, tensorsDigest, quantizedModelId, shortId, checkManifest, loadManifest, MANIFEST_FILE,
  CLIENT_FILES, GGUF_TOKENIZER_KEY
} from './model-id.ts'
export type { ModelManifest } from './model-id.ts'
export { ProgressMeter, storedPartBytes } from './progress.ts'
export type { ProgressEvent, ProgressListener } from './progress.ts'
export { cacheDir } from './cache-dir.ts'
export { PLEXUS_VERSION } from './version.ts'
export { loadTokenizer, vocabularyOf, StreamDecoder } from './tokenizer.ts'
export type { TextTokenizer, TokenizerSource } from './tokenizer.ts'
export { TokenizerPool, TokenizerError, encodeOffThread, INLINE_CHARS } from './tokenizer-pool.ts'
export type { TokenizerPoolOptions, TokenizerErrorCode, EncodeOptions, EncodeLimits } from './tokenizer-pool.ts'
export { templateSource, applyChatTemplate, templateSupportsTools } from './chat-template.ts'
export type { ChatToolCall, ChatTool, ChatMessage } from './chat-template.ts'
export { renderChatTemplate, TemplateError } from './template-render.ts'
export { inProcessRunner, chainRunners, forwardInChunks } from './runner.ts'
export type { SpanRunner, SpanSession } from './runner.ts'
export { safetensorsHeader, writeSafetensors } from './safetensors-write.ts'
export type { TensorToWrite } from './safetensors-write.ts'
export {
  ggmlTypeByName, GGUF_VALUE, dequantize, GgufFile, ggufNameOf, unpermuteRotary, GgufCheckpoint,
  sentencePieceMerges
} from './gguf/index.ts'
export {
  quantizeQ8_0, quantizeQ4_K, quantizeQ4_KScalar, quantizeQ5_K, quantizeQ6_K, isQuantFormat, quantTypeFor,
  withQuantization, storedSource, weightFormat, bytesPerWeight, QUANT_FORMATS, QuantizedSource, quantizationOf
} from './quant/index.ts'
export type { QuantFormat } from './quant/index.ts'
export { compileGrammar, GrammarError } from './grammar/index.ts'
export type { GrammarSpec, CompiledGrammar } from './grammar/index.ts'
export { kernelThreads, setKernelThreads, kernelsBuild, quantMatrix, QUANT_BLOCK } from './cpu/index.ts'
export type { QuantMatrixFormat } from './cpu/index.ts'

// every error the runtime throws on purpose, for instanceof checks by its users
export { GgufError } from './gguf/types.ts'
export { WeightsMismatchError } from './quant/quantized-source.ts'
export { QuantizeError } from './quant/quantize.ts'
export { QuantMatrixError } from './cpu/quant-matrix.ts'
export { GpuUnavailableError } from './webgpu/device.ts'
