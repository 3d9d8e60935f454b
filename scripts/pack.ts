// `npm run pack`: the installable tarballs. In the repository the packages run their TypeScript
// sources (Node ≥ 24 strips the types); Node refuses to strip types under node_modules, so what
// others install is JavaScript: compiled here into dist/packages/<name>/ with a package.json whose
// exports and bins point at it, then `npm pack`ed into dist/ (or --out DIR).
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const HELP = `usage: npm run pack [-- --out DIR]

Compiles packages/* to JavaScript (tsconfig.build.json) and writes one tarball per package into DIR
(default dist/), plus react-native-webrtc-124.0.6.tgz: a stand-in for that package, which
@libp2p/webrtc depends on and whose peer dependency react-native (over 80 MB) npm would install
too, though Node never loads either. Install them together, from any directory:
  npm install DIR/*.tgz   then   npx plexus-node --help`

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')

const { values: opts } = parseArgs({ options: { out: { type: 'string' }, help: { type: 'boolean', short: 'h' } } })
if (opts.help === true) { console.log(HELP); process.exit(0) }

const OUT = resolve(opts.out ?? join(ROOT, 'dist'))
const BUILD = join(ROOT, 'dist', 'build')
const STAGE = join(ROOT, 'dist', 'packages')
/** The oldest Node the packages run on: libp2p 3 and its dependencies need 22. */
const ENGINES = { node: '>=22' }
const STUB = join(ROOT, 'scripts', 'stubs', 'react-native-webrtc')

const say = (s: string): void => { process.stderr.write(`pack: ${s}\n`) }
const readJson = (p: string): any => JSON.parse(readFileSync(p, 'utf8'))

function walk (dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) walk(p, out)
    else out.push(p)
  }
  return out
}

say('compiling packages/*/src (tsconfig.build.json)…')
rmSync(BUILD, { recursive: true, force: true })
try {
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { stdio: 'inherit' })
} catch {
  say('tsc reported errors (above); the packages are not packed')
  process.exit(1)
}

const dirs = readdirSync(join(ROOT, 'packages')).filter(d => statSync(join(ROOT, 'packages', d, 'package.json'), { throwIfNoEntry: false }) != null)
const versions = new Map<string, string>(dirs.map(d => {
  const p = readJson(join(ROOT, 'packages', d, 'package.json'))
  return [p.name, p.version]
}))

rmSync(STAGE, { recursive: true, force: true })
mkdirSync(OUT, { recursive: true })
for (const d of dirs) {
  const src = join(ROOT, 'packages', d)
  const stage = join(STAGE, d)
  const pkg = readJson(join(src, 'package.json'))
  cpSync(join(BUILD, d, 'src'), join(stage, 'dist'), { recursive: true })
  // Files the code reads beside itself at run time (wasm kernels, the dashboard's assets).
  for (const f of walk(join(src, 'src'))) {
    if (f.endsWith('.ts') || f.endsWith('.c')) continue
    cpSync(f, join(stage, 'dist', relative(join(src, 'src'), f)))
  }
  for (const f of walk(join(stage, 'dist')).filter(f => f.endsWith('.js'))) {
    const text = readFileSync(f, 'utf8')
    // tsc rewrites import specifiers, not the worker files named as `new URL('./x.ts', import.meta.url)`
    const fixed = text.replace(/new URL\((['"])(\.{1,2}\/[^'"]+)\.ts\1, import\.meta\.url\)/g, 'new URL($1$2.js$1, import.meta.url)')
    if (/['"]\.{1,2}\/[^'"]*\.ts['"]/.test(fixed)) throw new Error(`${relative(ROOT, f)} still names a .ts file: pack.ts does not know that form`)
    if (fixed !== text) writeFileSync(f, fixed)
  }
  // Repository files the p2p package reads: the JSON Schemas it validates with (SCHEMA_DIR) and the
  // default bootstrap list (BOOTSTRAP_PEERS_FILE); each looks beside its compiled code first.
  if (pkg.name === '@plexus/p2p') {
    cpSync(join(ROOT, 'schemas'), join(stage, 'dist', 'schemas'), { recursive: true })
    cpSync(join(ROOT, 'bootstrap', 'peers.txt'), join(stage, 'dist', 'bootstrap', 'peers.txt'))
  }
  const files = ['dist']
  if (pkg.bin != null) { cpSync(join(src, 'bin'), join(stage, 'bin'), { recursive: true }); files.push('bin') }
  const exports: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(pkg.exports as Record<string, string>)) {
    if (typeof v !== 'string') throw new Error(`${pkg.name}: export "${k}" has no packed form in pack.ts`)
    if (!existsSync(join(src, v))) { say(`${pkg.name}: export "${k}" names ${v}, which does not exist: left out`); continue }
    const ts = /^\.\/src\/(.*)\.ts$/.exec(v)
    if (ts != null) {
      exports[k] = { types: `./dist/${ts[1]}.d.ts`, default: `./dist/${ts[1]}.js` }
    } else {
      cpSync(join(src, v), join(stage, v))
      exports[k] = v
      files.push(v.slice(2))
    }
  }
  const dependencies: Record<string, string> = {}
  for (const [name, range] of Object.entries(pkg.dependencies as Record<string, string>)) dependencies[name] = versions.get(name) ?? range
  const manifest = {
    name: pkg.name,
    version: pkg.version,
    description: pkg.description,
    license: pkg.license,
    type: 'module',
    engines: ENGINES,
    ...(Object.keys(exports).length > 0 ? { exports } : {}),
    ...(pkg.bin != null ? { bin: pkg.bin } : {}),
    files,
    dependencies
  }
  writeFileSync(join(stage, 'package.json'), JSON.stringify(manifest, null, 2) + '\n')
  cpSync(join(ROOT, 'LICENSE'), join(stage, 'LICENSE'))
}

say(`packing into ${OUT}…`)
for (const dir of [...dirs.map(d => join(STAGE, d)), STUB]) {
  const name = execFileSync('npm', ['pack', dir, '--silent', '--pack-destination', OUT], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop()
  console.log(join(OUT, name ?? '?'))
}
