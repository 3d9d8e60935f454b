// The package boundaries hold: each package is used through its public entry point
// (`@plexus/<name>`, its src/index.ts), never by a path into its sources, and imports only the
// packages its package.json declares. The swarm suites and scripts are users like any other.
import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const PACKAGES = readdirSync(join(ROOT, 'packages')).filter(name => statSync(join(ROOT, 'packages', name)).isDirectory())
/** Subpaths a package's `exports` map offers besides ".". */
const SUBPATHS = new Set(['@plexus/runtime/launch'])

function sources (dir: string): string[] {
  const out: string[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules' || entry.name === 'fixtures' || entry.name.startsWith('.')) continue
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...sources(path))
    else if (/\.(ts|js|mjs|cjs)$/.test(entry.name)) out.push(path)
  }
  return out
}

/** Every module specifier a file names: static imports and re-exports, dynamic import(), require(). */
function specifiers (text: string): string[] {
  const found: string[] = []
  const patterns = [/\bfrom\s+['"]([^'"]+)['"]/g, /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g, /\bimport\s+['"]([^'"]+)['"]/g, /\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g]
  for (const pattern of patterns) for (const m of text.matchAll(pattern)) found.push(m[1])
  return found
}

/** The package a path lies in, or undefined outside packages/. */
function packageOf (path: string): string | undefined {
  const rel = relative(join(ROOT, 'packages'), path)
  if (rel.startsWith('..')) return undefined
  return rel.split(sep)[0]
}

const files = [...sources(join(ROOT, 'packages')), ...sources(join(ROOT, 'test')), ...sources(join(ROOT, 'scripts'))]

describe('package boundaries', () => {
  it('finds the sources it checks', () => {
    assert.ok(files.length > 100, `only ${files.length} files found`)
    assert.deepEqual(PACKAGES.sort(), ['client', 'gateway', 'p2p', 'protocol', 'runtime', 'server'])
  })

  it('no file reaches into another package by path', () => {
    const deep: string[] = []
    for (const file of files) {
      const own = packageOf(file)
      for (const spec of specifiers(readFileSync(file, 'utf8'))) {
        if (!spec.startsWith('.')) continue
        const target = packageOf(resolve(dirname(file), spec))
        if (target !== undefined && target !== own) deep.push(`${relative(ROOT, file)} imports ${spec}`)
      }
    }
    assert.deepEqual(deep, [], `import these through @plexus/<name> instead:\n${deep.join('\n')}`)
  })

  it('@plexus imports name a package entry point, and packages declare what they import', () => {
    const wrong: string[] = []
    for (const file of files) {
      const own = packageOf(file)
      const declared = own === undefined
        ? undefined
        : (() => {
            const manifest = JSON.parse(readFileSync(join(ROOT, 'packages', own, 'package.json'), 'utf8'))
            return new Set(Object.keys({ ...manifest.dependencies, ...manifest.peerDependencies }))
          })()
      for (const spec of specifiers(readFileSync(file, 'utf8'))) {
        const m = /^@plexus\/([a-z0-9-]+)(\/.*)?$/.exec(spec)
        if (m == null) continue
        if (m[2] != null && !SUBPATHS.has(spec)) wrong.push(`${relative(ROOT, file)} imports the subpath ${spec}`)
        if (!PACKAGES.includes(m[1])) wrong.push(`${relative(ROOT, file)} imports ${spec}, which is no package`)
        if (own !== undefined && m[1] !== own && declared?.has(`@plexus/${m[1]}`) !== true) {
          wrong.push(`${relative(ROOT, file)} imports @plexus/${m[1]}, which packages/${own}/package.json does not declare`)
        }
      }
    }
    assert.deepEqual(wrong, [], wrong.join('\n'))
  })

  it('the package graph has no cycle', () => {
    const deps = new Map(PACKAGES.map(name => {
      const manifest = JSON.parse(readFileSync(join(ROOT, 'packages', name, 'package.json'), 'utf8'))
      return [name, Object.keys(manifest.dependencies ?? {}).filter(d => d.startsWith('@plexus/')).map(d => d.slice(8)).filter(d => d !== name)]
    }))
    const visiting = new Set<string>()
    const done = new Set<string>()
    const visit = (name: string, path: string[]): void => {
      if (done.has(name)) return
      assert.ok(!visiting.has(name), `cycle: ${[...path, name].join(' → ')}`)
      visiting.add(name)
      for (const dep of deps.get(name) ?? []) visit(dep, [...path, name])
      visiting.delete(name)
      done.add(name)
    }
    for (const name of PACKAGES) visit(name, [])
  })
})
