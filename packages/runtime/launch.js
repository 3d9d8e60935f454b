// Plain JavaScript on purpose: the bins start here under any Node, then run the TypeScript
// entry point under Node ≥ 24 (type stripping), re-executing with the bundled Node if needed.
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

function missingFlags (flags) {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)]
  return flags.filter(f => !given.some(g => g.split('=')[0] === f.split('=')[0]))
}

export async function launch (entryPath, { v8Flags = SERVICE_FLAGS } = {}) {
  const major = Number(process.versions.node.split('.')[0])
  const flags = missingFlags(v8Flags)
  if (major >= 24) {
    // Heap sizes are fixed when V8 starts: set them by replacing this process (same pid, same
    // stdio, so signals and supervisors still reach it).
    if (flags.length > 0 && typeof process.execve === 'function' && process.platform !== 'win32') {
      process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)], process.env)
    }
    await import(pathToFileURL(entryPath).href)
    return
  }
  let node
  try {
    node = createRequire(import.meta.url).resolve('node/bin/node')
  } catch {
    console.error(`Plexus needs Node.js ≥ 24 (this is ${process.version}); run \`npm ci\` in the Plexus checkout to get it.`)
    process.exit(1)
  }
  const r = spawnSync(node, [...flags, entryPath, ...process.argv.slice(2)], { stdio: 'inherit' })
  process.exit(r.status ?? 1)
}
