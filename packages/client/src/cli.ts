import yargs from 'yargs'
import type { Argv, InferredOptionTypes } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { withConfig, createLog, configureLoggingFromArgv, logSettings, defaultBootstrapPeers, bootstrapOrDefault, readSwarmKey, checkDnsServer, reportMismatches, setProcessNetwork, quantizeProblem } from '@plexus/p2p'
import type { FlagValues } from '@plexus/p2p'
import { MAX_SPECULATE, parseTrust, PlexusError, UsageError } from '@plexus/runtime'
import { runGenerate } from './commands/generate.ts'
import { runModels } from './commands/models.ts'
import { runServe } from './commands/serve.ts'
import { runMcp } from './commands/mcp.ts'
import { toolFlags, networkFlags, placementFlags, computeFlags, checkFlags, generateFlags, samplingFlags, speculationFlags, servingFlags, httpFlags, modelsFlags } from './cli-options.ts'

/** What yargs hands a check: the flags by their names on the command line, and the command. */
type Checked<G> = G & { _: Array<string | number> }

/** --trust, --check-rate, --trust-verifier: a usage error (string) or true. */
function checkTrustFlags (a: Checked<InferredOptionTypes<typeof checkFlags & typeof placementFlags & Pick<typeof servingFlags, 'trust'>> & { 'check-every'?: number }>): string | true {
  try { parseTrust(a.trust) } catch (err) { return (err as Error).message }
  if (!(a['check-rate'] >= 0 && a['check-rate'] <= 1)) return `--check-rate must be between 0 and 1 (got ${a['check-rate']})`
  if (a['check-every'] != null && !(Number.isInteger(a['check-every']) && a['check-every'] >= 1)) return '--check-every must be a positive integer'
  for (const v of a['trust-verifier'] ?? []) if (!/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/.test(v)) return `--trust-verifier ${v}: not an Ed25519 peer id (12D3KooW…)`
  if (a.local && a.trust === 'verified' && a._[0] === 'generate') return '--trust verified checks the servers of a swarm: use it with --bootstrap, not --local'
  return true
}

/** --speculate, --draft, --draft-model, --draft-blocks: a usage error (string) or true. */
function checkSpeculate (a: Checked<InferredOptionTypes<typeof speculationFlags & Pick<typeof generateFlags, 'trust'>>>): string | true {
  const k = a.speculate
  const drafting = a.draft != null || a['draft-model'] != null || a['draft-blocks'] != null
  if (k == null) return drafting ? '--draft, --draft-model and --draft-blocks choose how --speculate drafts: give --speculate k too' : true
  if (!Number.isInteger(k) || k < 1 || k > MAX_SPECULATE) return `--speculate must be an integer in 1..${MAX_SPECULATE} (got ${k})`
  if (a.draft === 'model' && a['draft-model'] == null) return '--draft model needs --draft-model DIR'
  if (a.draft === 'prompt-lookup' && a['draft-model'] != null) return '--draft prompt-lookup uses no model: leave out --draft-model'
  if (a['draft-blocks'] != null && (a['draft-model'] == null || !Number.isInteger(a['draft-blocks']) || a['draft-blocks'] < 1)) return '--draft-blocks needs --draft-model and a positive integer'
  // a gateway's requests may ask for another trust level: those that ask for verified decode plainly (engine.ts)
  if (a.trust === 'verified' && a._[0] === 'generate') return '--speculate rolls the servers back past rejected drafts, which spot checks cannot follow: use it with --trust fast'
  return true
}

/** The checks of the commands that serve models to others (serve, mcp): a usage error (string) or true. */
function checkServing (a: Checked<InferredOptionTypes<typeof networkFlags & typeof placementFlags & typeof computeFlags & typeof checkFlags & typeof servingFlags & typeof speculationFlags>>): string | true {
  if (!Number.isInteger(a['max-concurrent']) || a['max-concurrent'] < 1) return '--max-concurrent must be a positive integer'
  if (!Number.isInteger(a['max-models']) || a['max-models'] < 1) return '--max-models must be a positive integer'
  const spec = checkSpeculate(a)
  if (spec !== true) return spec
  return quantizeProblem(a.quantize) ?? checkTrustFlags(a)
}

/** The flags of the commands that serve models to others (serve, mcp): which models, from where, how. */
function servingCommand<T> (y: Argv<T>) {
  return y.options(networkFlags).options(placementFlags).options(servingFlags).options(computeFlags).options(checkFlags).options(speculationFlags)
}

/**
 * Before a command runs: the swarm key and DNS resolver for every node it makes, and the shipped
 * bootstrap list when a swarm command names no bootstrap peer (generate/serve/mcp without
 * --local; models always).
 */
async function networkMiddleware (a: Checked<Partial<FlagValues<typeof networkFlags & typeof placementFlags>>>): Promise<void> {
  const command = a._[0]
  if (command !== 'generate' && command !== 'serve' && command !== 'mcp' && command !== 'models') return
  for (const url of a.stun ?? []) if (!/^stun:[^\s/]+$/.test(url)) throw new UsageError(`bad --stun ${url}: expected stun:HOST:PORT`)
  setProcessNetwork({
    // servers behind NAT announce relayed and WebRTC addresses: dial those too (direct ones first)
    dialRelayed: true,
    ...(a.stun != null && a.stun.length > 0 ? { stun: a.stun } : {}),
    ...(a.swarmKey != null ? { swarmKey: await readSwarmKey(a.swarmKey), onSwarmKeyMismatch: reportMismatches('plexus-client') } : {}),
    ...(a.dnsResolver != null ? { dnsResolver: checkDnsServer(a.dnsResolver) } : {})
  })
  if (a.local === true || (a.bootstrap != null && a.bootstrap.length > 0)) return
  // generate/serve/mcp say "--local or --bootstrap" themselves when there is no list either
  const listed = command === 'models' ? bootstrapOrDefault(undefined) : defaultBootstrapPeers()
  if (listed.length > 0) a.bootstrap = listed
}

/** Errors users can act on are printed as one line; anything else keeps its stack for a bug report. */
const log = createLog('client')

/** Errors: one line `plexus-client: …` in text (its usual form), an error object in JSON. */
function fail (msg: string, code: number, fields: Record<string, unknown> = {}): never {
  if (logSettings().format === 'json') log.error(msg, fields)
  else process.stderr.write(`plexus-client: ${msg}\n${code === 2 && fields.code === 'usage' ? 'Run plexus-client --help for usage.\n' : ''}`)
  process.exit(code)
}

function report (err: any): never {
  // a failed yargs check rejects with its message string
  if (typeof err === 'string') fail(err, 2, { code: 'usage' })
  if (err instanceof PlexusError) fail(err.message, err.exitCode, { error: err.name, code: err.code })
  // not ours but a usage mistake all the same: yargs' own validation, an argument out of range (a context overflow)
  const expected = err?.name === 'YError' || err?.name === 'RangeError'
  fail(expected ? err.message : (err?.stack ?? String(err)), expected ? 2 : 1, { error: err?.name ?? 'Error', ...(err?.code != null ? { code: err.code } : {}) })
}

configureLoggingFromArgv(hideBin(process.argv), '[plexus] ')
const argv = ((): string[] => {
  try {
    return withConfig(hideBin(process.argv), {
      schema: 'client-config',
      commands: { generate: ['logging', 'source', 'generate', 'speculation'], serve: ['logging', 'source', 'serving', 'speculation', 'serve'], mcp: ['logging', 'source', 'serving', 'speculation'], models: ['logging', 'models'] }
    })
  } catch (err) { return report(err) }
})()
configureLoggingFromArgv(argv, '[plexus] ')

await yargs(argv)
  .scriptName('plexus-client')
  .middleware(networkMiddleware)
  .options(toolFlags)
  .usage('$0 <command> [options]\n\nRun a language model on your own machine or across a Plexus swarm.')
  .command('generate', 'Generate text from a prompt', (y) => y
    .usage('$0 generate (--local | --bootstrap MULTIADDR) --model DIR|NAME|ID (--prompt TEXT | --token-ids 1,2,3) [options]\n\n' +
      'Streams the generated text to stdout as it is produced (token ids when the model has no tokenizer).')
    .options(networkFlags)
    .options(placementFlags)
    .options(generateFlags)
    .options(computeFlags)
    .options(samplingFlags)
    .options(checkFlags)
    .options(speculationFlags)
    .example('$0 generate --local --model ./models/small --prompt "The swarm"', 'stream text from a local model')
    .example('$0 generate --local --model ./models/tiny --token-ids 1,5,9 --max-tokens 8 --json', 'token ids in, JSON out')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model ./models/small --prompt "Hi"', 'through a swarm')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi"', 'through a swarm, fetching the client parts from its peers')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi" --trust verified --check-rate 0.25', 'spot-check a quarter of the hops')
    .check((a) => {
      if (!Number.isInteger(a['max-tokens']) || a['max-tokens'] < 0) return '--max-tokens must be a non-negative integer'
      const spec = checkSpeculate(a)
      if (spec !== true) return spec
      return quantizeProblem(a.quantize) ?? checkTrustFlags(a)
    }),
  async (argv) => { await runGenerate(argv) })
  .command('models', 'List the models a swarm serves and how many servers hold each block', (y) => y
    .options(networkFlags)
    .options(modelsFlags)
    .example('$0 models --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...', 'what can this swarm run?'),
  async (argv) => { await runModels(argv) })
  .command('serve', 'Serve models over HTTP with OpenAI-, Anthropic- and Ollama-compatible APIs and MCP', (y) => servingCommand(y)
    .usage('$0 serve (--bootstrap MULTIADDR... [--model DIR|NAME|ID] | --local --model DIR) [--port 9337] [--host 127.0.0.1] [--api-key KEY] [--max-concurrent N]\n\n' +
      'OpenAI: /v1/models, /v1/chat/completions, /v1/completions; Anthropic: /v1/messages; Ollama: /api/generate, /api/chat, /api/tags, /api/show, /api/ps; MCP (streamable HTTP): /mcp; Prometheus: /metrics.\n' +
      'Through a swarm, every model the swarm serves is available: a request names it in its model field, and its client parts are fetched on first use.')
    .options(httpFlags)
    .example('$0 serve --local --model ./models/tiny', 'serve a local model on http://127.0.0.1:9337')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --api-key s3cret', 'serve every model of a swarm')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small', 'open the swarm\'s model "small" at start')
    .check((a) => {
      if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) return '--port must be an integer in 0..65535'
      if (!(a['request-timeout'] > 0)) return '--request-timeout must be a number of seconds > 0'
      if (!Number.isInteger(a['max-connections']) || a['max-connections'] < 1) return '--max-connections must be an integer ≥ 1'
      return checkServing(a)
    }),
  async (argv) => { await runServe(argv) })
  .command('mcp', 'Serve models to MCP clients (Claude Desktop, IDEs, agents) over stdin/stdout', (y) => servingCommand(y)
    .usage('$0 mcp (--bootstrap MULTIADDR... [--model DIR|NAME|ID] | --local --model DIR) [options]\n\n' +
      'An MCP server on stdio with the tools generate, chat, list_models and swarm_status; it logs to stderr only.\n' +
      'The HTTP gateway (plexus-client serve) offers the same tools at /mcp (streamable HTTP).')
    .example('$0 mcp --local --model ./models/small', 'one local model')
    .example('$0 mcp --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW...', 'every model of a swarm')
    .epilog('In an MCP client\'s configuration (Claude Desktop: claude_desktop_config.json):\n' +
      '  { "mcpServers": { "plexus": { "command": "npx",\n' +
      '      "args": ["plexus-client", "mcp", "--bootstrap", "/ip4/192.168.1.10/tcp/31337/p2p/12D3KooW..."] } } }')
    .check(checkServing),
  async (argv) => { await runMcp(argv) })
  .demandCommand(1, 'Choose a command (see --help)')
  .strict()
  .fail((msg, err) => {
    // YError: yargs' own validation (bad flags, failed checks) — a usage mistake, not a crash
    if (err != null && err.name !== 'YError') report(err)
    fail(msg ?? err?.message, 2, { code: 'usage' })
  })
  .help()
  .parseAsync()
  // a one-shot command is done: WebRTC's native library (used to reach servers behind NAT) keeps
  // threads that would hold the process open after its node stopped
  .then((a) => { if (['generate', 'models'].includes(String(a._[0]))) process.exit(process.exitCode ?? 0) })
  .catch(report)
