export * from './quantize.ts'
export * from './quantized-source.ts'
