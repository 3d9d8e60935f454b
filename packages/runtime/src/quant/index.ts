export * from './quantize.ts'
export { quantizeQ4_K } from '../cpu/quantize-blocks.ts'
export * from './quantized-source.ts'
