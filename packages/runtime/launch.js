// Plain JavaScript on purpose: the bins start here under any Node. In the repository they run the
// TypeScript entry point under Node ≥ 24 (type stripping), re-executing with the Node that `npm ci`
// put in node_modules if needed; a packed install runs compiled JavaScript on Node ≥ 22.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'

/**
 * V8 flags for long-running processes. Bursts of network traffic (16 sessions' frames at once)
 * grow V8's young generation to 128 MiB, pages that V8 keeps after the burst; with 8 MiB
 * semi-spaces a server under 16-way load stays within ~20 MiB of its idle RSS instead of
 * ~80 MiB above it, at no throughput cost measured (bench:load, 8 clients). A flag the user
 * set (command line or NODE_OPTIONS) wins.
 */
const SERVICE_FLAGS = ['--max-semi-space-size=8']

/**
 * glibc's malloc for long-running processes. By default it raises its mmap threshold to the
 * largest block freed (up to 32 MiB), so the transient buffers of a weight load come from heaps
 * it keeps after they are freed: a node serving 89 MiB of q8_0 blocks stayed at 375–416 MiB RSS,
 * 306–312 MiB with a fixed 128 KiB threshold (large blocks are mmap'd and returned when freed).
 * And at most two malloc arenas: glibc opens one per thread that allocates (up to 8 per core),
 * and a node runs ~15 threads (libuv, V8's, QUIC's, span and kernel workers), each arena keeping
 * its own freed pages (a bare node: 10 MiB resident in its thread arenas, 4 MiB with two).
 * A value the user set wins.
 */
const SERVICE_ENV = process.platform === 'linux' ? { MALLOC_MMAP_THRESHOLD_: '131072', MALLOC_ARENA_MAX: '2' } : {}

function missingEnv (env) {
  const add = Object.entries(env).filter(([k]) => process.env[k] == null)
  return add.length > 0 ? Object.fromEntries(add) : undefined
}

function missingFlags (flags) {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)]
  return flags.filter(f => !given.some(g => g.split('=')[0] === f.split('=')[0]))
}

export async function launch (entryPath, { v8Flags = SERVICE_FLAGS } = {}) {
  const major = Number(process.versions.node.split('.')[0])
  const flags = missingFlags(v8Flags)
  const env = missingEnv(SERVICE_ENV)
  const needs = entryPath.endsWith('.ts') ? 24 : 22
  if (major >= needs) {
    // Heap sizes and malloc settings are fixed when the process starts: set them by replacing this process (same pid, same
    // stdio, so signals and supervisors still reach it).
    if ((flags.length > 0 || env != null) && typeof process.execve === 'function' && process.platform !== 'win32') {
      process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, ...env })
    }
    await import(pathToFileURL(entryPath).href)
    return
  }
  let node
  try {
    node = createRequire(import.meta.url).resolve('node/bin/node')
  } catch {
    const how = needs === 24 ? 'run `npm ci` in the Plexus checkout to get it' : 'install a newer Node.js'
    console.error(`Plexus needs Node.js ≥ ${needs} (this is ${process.version}); ${how}.`)
    process.exit(1)
  }
  const r = spawnSync(node, [...flags, entryPath, ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, ...env } })
  process.exit(r.status ?? 1)
}
