// The few WebAssembly JS-API types the kernels use (this project's typings have no WebAssembly).

export interface WasmMemory { readonly buffer: ArrayBuffer | SharedArrayBuffer, grow (pages: number): number }
export interface WasmModule { readonly __wasmModule?: never }
interface WasmApi {
  Memory: new (d: { initial: number, maximum: number, shared: boolean }) => WasmMemory
  Module: new (bytes: Uint8Array) => WasmModule
  validate: (bytes: Uint8Array) => boolean
  Instance: new (m: WasmModule, imports: object) => { exports: object }
}

export const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly
