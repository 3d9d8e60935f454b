// A bridge to llama.cpp's own reference quantizers in node-llama-cpp's libggml-base (the
// quantizing counterpart of llamaCppDequantizer in gguf.ts).
import { writeFile, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { ROOT } from './fixtures.ts'
import { GGML_BASE } from './gguf.ts'

const run = promisify(execFile)

export interface LlamaCppQuantizer {
  /** `symbol` (e.g. quantize_row_q8_0_ref) over `x`, returning `outBytes` bytes of blocks. */
  quantize: (symbol: string, x: Float32Array, outBytes: number) => Promise<Uint8Array>
  dispose: () => Promise<void>
}

/** Compiles the bridge once (callers check llamaCppUnavailable() first). */
export async function llamaCppQuantizer (): Promise<LlamaCppQuantizer> {
  const dir = await mkdtemp(join(tmpdir(), 'plexus-ggml-q-'))
  const exe = join(dir, 'ggml-quantize')
  await run('cc', ['-O2', '-o', exe, join(ROOT, 'test', 'support', 'ggml-quantize.c'), '-ldl'])
  let k = 0
  return {
    quantize: async (symbol, x, outBytes) => {
      const inPath = join(dir, `in${k}`)
      const outPath = join(dir, `out${k++}`)
      await writeFile(inPath, new Uint8Array(x.buffer, x.byteOffset, x.byteLength))
      await run(exe, [GGML_BASE, symbol, String(x.length), inPath, outPath, String(outBytes)])
      return new Uint8Array(await readFile(outPath))
    },
    dispose: async () => { await rm(dir, { recursive: true, force: true }) }
  }
}
