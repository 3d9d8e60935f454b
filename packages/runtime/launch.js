// Plain JavaScript on purpose: the bins start here under any Node, then run the TypeScript
// entry point under Node ≥ 24 (type stripping), re-executing with the bundled Node if needed.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'

export async function launch (entryPath) {
  const major = Number(process.versions.node.split('.')[0])
  if (major >= 24) {
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
  const r = spawnSync(node, [entryPath, ...process.argv.slice(2)], { stdio: 'inherit' })
  process.exit(r.status ?? 1)
}
