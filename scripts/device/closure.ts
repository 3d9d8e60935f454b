// Prints, one per line, the package directories (relative to ROOT) that the given packages need at
// run time: Node's resolution walked from each package through its dependencies and optional
// dependencies. Used by pack.sh to carry only what the GPU machine runs.
// usage: node scripts/device/closure.ts ROOT FROM_DIR:PKG [FROM_DIR:PKG ...] [--skip NAME ...]
import { existsSync, readFileSync, realpathSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'

const args = process.argv.slice(2)
const root = resolve(args.shift() ?? '.')
const skip = new Set<string>()
const starts: [string, string][] = []
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--skip') { skip.add(args[++i]); continue }
  const c = args[i].lastIndexOf(':')
  starts.push([resolve(root, args[i].slice(0, c)), args[i].slice(c + 1)])
}

/** Where `name` resolves from `from`: the nearest node_modules/name up the tree, within root. */
function find (from: string, name: string): string | undefined {
  let d = from
  for (;;) {
    const p = join(d, 'node_modules', name)
    if (existsSync(join(p, 'package.json'))) return p
    if (d === root || dirname(d) === d) return undefined
    d = dirname(d)
  }
}

const seen = new Set<string>()
const out: string[] = []
const missing: string[] = []
function visit (from: string, name: string, optional: boolean): void {
  if (skip.has(name)) return
  const p = find(from, name)
  if (p == null) { if (!optional) missing.push(`${name} (from ${relative(root, from) || '.'})`); return }
  if (seen.has(p)) return
  seen.add(p)
  out.push(relative(root, p))
  const pkg = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8'))
  // A workspace link: its dependencies resolve from its real directory.
  const real = realpathSync(p)
  for (const d of Object.keys(pkg.dependencies ?? {})) visit(real, d, false)
  for (const d of Object.keys(pkg.optionalDependencies ?? {})) visit(real, d, true)
  for (const [d, meta] of Object.entries<any>(pkg.peerDependenciesMeta ?? {})) if (meta?.optional !== true) visit(real, d, true)
}
for (const [from, name] of starts) visit(from, name, false)
if (missing.length > 0) process.stderr.write(`closure: not installed: ${missing.join(', ')}\n`)
process.stdout.write(out.sort().join('\n') + '\n')
