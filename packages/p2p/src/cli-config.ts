// `--config FILE` (YAML or JSON) and PLEXUS_* environment variables for the command-line tools.
// Both fill in the flags a command line leaves out, in this order of precedence: the command
// line, then the environment, then the file, then the flags' defaults. The file is checked
// against its schema (schemas/<tool>-config.schema.json), so a typo is an error that names it.
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { getValidator, schemaProblem } from './schemas.ts'
import { PlexusError } from '@plexus/runtime'

export interface CliConfigSpec {
  /** The schema of the tool's file, e.g. 'node-config'. */
  schema: string
  /** Each command's flags, as the schema's `$defs` that hold them. */
  commands: Record<string, string[]>
}

/** Environment variables and the flag each stands for (lists: separated by spaces or commas). */
export const ENV_FLAGS: Readonly<Record<string, string>> = {
  PLEXUS_BOOTSTRAP: 'bootstrap',
  PLEXUS_MODEL: 'model',
  PLEXUS_BACKEND: 'backend',
  PLEXUS_LISTEN: 'listen',
  PLEXUS_ANNOUNCE: 'announce',
  PLEXUS_KEY: 'key',
  PLEXUS_MEMORY: 'memory',
  PLEXUS_METRICS_PORT: 'metrics-port',
  PLEXUS_API_KEY: 'api-key',
  PLEXUS_HOST: 'host',
  PLEXUS_PORT: 'port',
  PLEXUS_LOG_LEVEL: 'log-level',
  PLEXUS_LOG_FORMAT: 'log-format'
}

/** A configuration file or variable that cannot be used; the message names it. */
export class ConfigFileError extends PlexusError {
  constructor (message: string) { super('config-file', message, { httpStatus: 400 }); this.name = 'ConfigFileError' }
}

type FlagSchema = { type?: string, items?: unknown }

/**
 * `argv` (without node and the script) with the flags that the file named by `--config` (or
 * $PLEXUS_CONFIG) and the PLEXUS_* variables set, for the command being run, appended where the
 * command line does not give them. `--config FILE` itself is taken out.
 */
export function withConfig (argv: string[], spec: CliConfigSpec, env: NodeJS.ProcessEnv = process.env): string[] {
  const { args, configPath } = takeConfigFlag(argv)
  const command = args[0]
  const defs = spec.commands[command]
  const path = configPath ?? (env.PLEXUS_CONFIG !== '' ? env.PLEXUS_CONFIG : undefined)
  if (defs == null) return args // --help, --version, an unknown command: yargs answers
  const flags = flagSchemas(spec.schema, defs)
  const fromFile = path != null ? readConfig(path, spec.schema) : {}
  const fromEnv: Record<string, unknown> = {}
  for (const [name, flag] of Object.entries(ENV_FLAGS)) {
    const raw = env[name]
    if (raw == null || raw === '' || flags[flag] == null) continue
    fromEnv[flag] = fromText(raw, flags[flag], name)
  }
  const given = givenFlags(args)
  const extra: string[] = []
  for (const [flag, value] of Object.entries({ ...fromFile, ...fromEnv })) {
    // a key of another command (one file may serve several) is left for that command
    if (flags[flag] == null || given.has(flag)) continue
    if (Array.isArray(value)) for (const v of value) extra.push(`--${flag}`, String(v))
    else if (typeof value === 'boolean') extra.push(value ? `--${flag}` : `--no-${flag}`)
    else extra.push(`--${flag}`, String(value))
  }
  return [...args, ...extra]
}

function takeConfigFlag (argv: string[]): { args: string[], configPath?: string } {
  const args: string[] = []
  let configPath: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--config') {
      configPath = argv[++i]
      if (configPath == null || configPath.startsWith('--')) throw new ConfigFileError('--config needs a file (YAML or JSON)')
    } else if (a.startsWith('--config=')) {
      configPath = a.slice('--config='.length)
    } else {
      args.push(a)
    }
  }
  return { args, configPath }
}

/** The flags named on the command line, kebab-case, `--no-x` counting as `x`. */
function givenFlags (args: string[]): Set<string> {
  const given = new Set<string>()
  for (const a of args) {
    if (!a.startsWith('--')) continue
    const name = a.slice(2).split('=')[0].replace(/[A-Z]/g, c => `-${c.toLowerCase()}`)
    given.add(name.startsWith('no-') ? name.slice(3) : name)
  }
  return given
}

/** The flags the command's `$defs` hold, with their schemas. */
function flagSchemas (schemaId: string, defs: string[]): Record<string, FlagSchema> {
  const schema = getValidator(schemaId).schema as { $defs?: Record<string, { properties?: Record<string, FlagSchema> }> }
  const out: Record<string, FlagSchema> = {}
  for (const d of defs) Object.assign(out, schema.$defs?.[d]?.properties ?? {})
  return out
}

function readConfig (path: string, schemaId: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigFileError(`--config ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  let value: unknown
  try {
    // YAML 1.2 reads JSON too, but JSON's own parser gives the clearer error for a .json file
    value = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new ConfigFileError(`--config ${path}: not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`)
  }
  if (value == null) return {}
  const problem = schemaProblem(schemaId, value)
  if (problem != null) throw new ConfigFileError(`--config ${path}: ${problem.replace(/^does not match schema "[^"]*" /, '')}${hint(problem)}`)
  return value as Record<string, unknown>
}

function hint (problem: string): string {
  return /unevaluated/.test(problem) ? ' (keys are the flags without "--"; see schemas/ for every key)' : ''
}

/** An environment variable's text as the flag's type. */
function fromText (raw: string, flag: FlagSchema, name: string): unknown {
  if (flag.type === 'array') return raw.split(/[\s,]+/).filter(s => s !== '')
  if (flag.type === 'number' || flag.type === 'integer') {
    const n = Number(raw)
    if (!Number.isFinite(n) || (flag.type === 'integer' && !Number.isInteger(n))) throw new ConfigFileError(`${name}=${raw}: expected ${flag.type === 'integer' ? 'an integer' : 'a number'}`)
    return n
  }
  if (flag.type === 'boolean') {
    if (/^(1|true|yes|on)$/i.test(raw)) return true
    if (/^(0|false|no|off)$/i.test(raw)) return false
    throw new ConfigFileError(`${name}=${raw}: expected true or false`)
  }
  return raw
}
