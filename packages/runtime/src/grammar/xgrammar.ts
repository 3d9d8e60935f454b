// Loading xgrammar (@mlc-ai/web-xgrammar, its C++ core built to WebAssembly) into Node, and
// turning its fatal errors into exceptions that say what was wrong.
import { createRequire, Module } from 'node:module'
import { readFileSync } from 'node:fs'
import type * as Xgrammar from '@mlc-ai/web-xgrammar'

export type XgrammarExports = Pick<typeof Xgrammar, 'Grammar' | 'GrammarCompiler' | 'TokenizerInfo' | 'GrammarMatcher'>

/**
 * One WebAssembly instance of xgrammar. A bad schema or grammar makes xgrammar abort: the
 * instance throws a bare "Aborted()" after printing the reason to its error stream. `capture`
 * runs a call with that stream collected, and marks the instance `aborted` when the call fails
 * that way: its heap and stack may then be left mid-operation, so it is not reused for new work.
 */
export class XgrammarInstance {
  readonly x: XgrammarExports
  aborted = false
  #log: string[] | undefined
  #queue: Promise<unknown> = Promise.resolve()

  private constructor (x: XgrammarExports) { this.x = x }

  /** A fresh instance (about 20–40 ms). */
  static async load (): Promise<XgrammarInstance> {
    const inst = new XgrammarInstance(evaluate())
    // The module binds console.error as its error stream when it starts (on its first call):
    // hand it one that feeds this instance's capture and passes anything else through.
    const original = console.error
    console.error = (...args: unknown[]) => {
      if (inst.#log != null) inst.#log.push(args.map(String).join(' '))
      else original(...args)
    }
    try {
      (await inst.x.Grammar.builtinJSONGrammar()).dispose()
    } finally {
      console.error = original
    }
    return inst
  }

  /** Runs `fn` (after any capture still running: each needs the stream to itself); a failure is rethrown as an Error carrying xgrammar's own reason. */
  async capture<T> (fn: (x: XgrammarExports) => T | Promise<T>): Promise<T> {
    const turn = this.#queue.then(async () => await this.#captureNow(fn))
    this.#queue = turn.catch(() => {})
    return await turn
  }

  async #captureNow<T> (fn: (x: XgrammarExports) => T | Promise<T>): Promise<T> {
    this.#log = []
    try {
      return await fn(this.x)
    } catch (err) {
      const reason = fatalReason(this.#log)
      // WebAssembly.RuntimeError (not in this project's typings): an abort or a trap
      if ((err as Error)?.name === 'RuntimeError' || reason != null) {
        this.aborted = true
        throw new Error(reason ?? (err as Error).message, { cause: err })
      }
      throw err
    } finally {
      this.#log = undefined
    }
  }
}

/**
 * The package is a UMD bundle inside a "type": "module" package, so Node's `import` reads it as
 * ESM and finds no exports: evaluate it as the CommonJS module it is. Each call is a new instance.
 */
function evaluate (): XgrammarExports {
  const require = createRequire(import.meta.url)
  const path = require.resolve('@mlc-ai/web-xgrammar')
  // Node's CommonJS internals, stable since Node 0.x but not in its typings.
  const Mod = Module as unknown as {
    new (id: string): { filename: string, paths: string[], exports: XgrammarExports, _compile (src: string, file: string): void }
    _nodeModulePaths (dir: string): string[]
  }
  const m = new Mod(path)
  m.filename = path
  m.paths = Mod._nodeModulePaths(path)
  m._compile(source(path), path)
  return m.exports
}

let cachedSource: string | undefined
const source = (path: string): string => (cachedSource ??= readFileSync(path, 'utf8'))

/** "[FATAL] /path/json_schema_converter.cc:902: Unsupported type \"strin\"" → the message. */
function fatalReason (log: string[]): string | undefined {
  const fatal = log.find(l => l.includes('[FATAL]'))
  if (fatal == null) return undefined
  return fatal
    .replace(/^.*\[FATAL\]\s*\S+?:\d+:\s*/s, '')
    .replace(/^Check failed: \(.*?\) is false:\s*/, '')
    .trim()
}
