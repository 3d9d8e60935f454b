export * from './quantize.ts'
