export * from './quant-matrix.ts'

export { kernelThreads, setKernelThreads } from './threads.ts'
export { kernelsBuild } from './arena.ts'
