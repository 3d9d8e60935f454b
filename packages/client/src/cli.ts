import yargs from 'yargs'
import type { Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { withConfig, createLog, configureLoggingFromArgv, logSettings, LOG_LEVELS, LOG_FORMATS, defaultBootstrapPeers, bootstrapOrDefault, readSwarmKey, checkDnsServer, reportMismatches, setProcessNetwork } from '@plexus/p2p'
import { BACKENDS, QUANT_FORMATS, MAX_SPECULATE, isQuantFormat } from '@plexus/runtime'
import { runGenerate } from './commands/generate.ts'
import { runModels } from './commands/models.ts'
import type { ModelsArgs } from './commands/models.ts'
import type { GenerateArgs } from './commands/generate.ts'
import { runServe } from './commands/serve.ts'
import type { ServeArgs } from './commands/serve.ts'
import { runMcp } from './commands/mcp.ts'
import type { McpArgs } from './commands/mcp.ts'

/** --trust, --check-rate, --trust-verifier: a usage error (string) or true. */
function checkTrustFlags (a: Record<string, any>): string | true {
  if (a.trust === 'attested') return '--trust attested is not supported yet: it needs hardware attestation of the servers (TEE quotes), which Plexus does not implement; use verified or fast'
  if (!(a['check-rate'] >= 0 && a['check-rate'] <= 1)) return `--check-rate must be between 0 and 1 (got ${a['check-rate']})`
  if (a['check-every'] != null && !(Number.isInteger(a['check-every']) && a['check-every'] >= 1)) return '--check-every must be a positive integer'
  for (const v of a['trust-verifier'] ?? []) if (!/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/.test(v)) return `--trust-verifier ${v}: not an Ed25519 peer id (12D3KooW…)`
  if (a.local === true && a.trust === 'verified' && a._?.[0] === 'generate') return '--trust verified checks the servers of a swarm: use it with --bootstrap, not --local'
  return true
}

/** --speculate, --draft, --draft-model, --draft-blocks: a usage error (string) or true. */
function checkSpeculate (a: Record<string, any>): string | true {
  const k = a.speculate
  const drafting = a.draft != null || a['draft-model'] != null || a['draft-blocks'] != null
  if (k == null) return drafting ? '--draft, --draft-model and --draft-blocks choose how --speculate drafts: give --speculate k too' : true
  if (!Number.isInteger(k) || k < 1 || k > MAX_SPECULATE) return `--speculate must be an integer in 1..${MAX_SPECULATE} (got ${k})`
  if (a.draft === 'model' && a['draft-model'] == null) return '--draft model needs --draft-model DIR'
  if (a.draft === 'prompt-lookup' && a['draft-model'] != null) return '--draft prompt-lookup uses no model: leave out --draft-model'
  if (a['draft-blocks'] != null && (a['draft-model'] == null || !Number.isInteger(a['draft-blocks']) || a['draft-blocks'] < 1)) return '--draft-blocks needs --draft-model and a positive integer'
  if (a.trust === 'verified') return '--speculate rolls the servers back past rejected drafts, which spot checks cannot follow: use it with --trust fast'
  return true
}

const QUANTIZE_HELP = `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); with --bootstrap, use the swarm's nodes that quantize the same way`

/** --quantize: a usage error (string) or true. */
function checkQuantize (a: Record<string, any>): string | true {
  return a.quantize == null || isQuantFormat(a.quantize) ? true : `--quantize ${a.quantize}: expected one of ${QUANT_FORMATS.join(', ')}`
}

/** The flags of the commands that serve models to others (serve, mcp): which models, from where, how. */
function servingOptions<T> (y: Argv<T>) {
  return y
    .option('local', { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' })
    .option('bootstrap', { type: 'array', string: true, describe: BOOTSTRAP_HELP })
    .option('swarm-key', { type: 'string', describe: SWARM_KEY_HELP })
    .option('dns-resolver', { type: 'string', describe: DNS_RESOLVER_HELP })
    .option('stun', { type: 'array', string: true, describe: STUN_HELP })
    .option('model', { type: 'string', describe: 'Model directory or .gguf file (required with --local); with --bootstrap, a model opened at start (a directory, file, name, id or id prefix), the others on first use' })
    .option('max-models', { type: 'number', default: 4, describe: 'With --bootstrap: the most models open at once (each holds its embeddings and LM head)' })
    .option('cache-dir', { type: 'string', describe: 'Where models fetched from the swarm are kept (default: ~/.cache/plexus/models; $PLEXUS_CACHE_DIR moves ~/.cache/plexus)' })
    .option('wire-dtype', { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' })
    .option('forward', { type: 'boolean', default: false, describe: 'Servers push activations straight to the next server of the route (n + 1 transfers per token instead of 2n); --no-forward: every hop answers the client' })
    .option('quantize', { type: 'string', describe: QUANTIZE_HELP })
    .option('max-concurrent', { type: 'number', default: 16, describe: 'Generations run at once, all models together; more wait their turn' })
    .option('backend', { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' })
    .option('trust', { choices: ['fast', 'verified', 'attested'], default: 'fast', describe: "Trust level of requests that name none (HTTP: X-Plexus-Trust). fast: take servers' outputs as they come; verified: verifier peers re-compute a share of the steps, and a wrong one is rolled back and re-run elsewhere; attested: not supported yet" })
    .option('check-rate', { type: 'number', default: 0.1, describe: 'With --trust verified: the fraction of hops whose every step a verifier re-computes (0..1)' })
    .option('trust-verifier', { type: 'array', string: true, describe: 'Peer id of a verifier whose fraud reports and reputation records alone are believed (repeatable)' })
}

/** servingOptions' checks: a usage error (string) or true. */
function checkServing (a: Record<string, any>): string | true {
  if (!Number.isInteger(a['max-concurrent']) || a['max-concurrent'] < 1) return '--max-concurrent must be a positive integer'
  if (!Number.isInteger(a['max-models']) || a['max-models'] < 1) return '--max-models must be a positive integer'
  const q = checkQuantize(a)
  return q !== true ? q : checkTrustFlags(a)
}

const BOOTSTRAP_HELP = 'Join a swarm through this peer: a multiaddr ending in /p2p/<id>, or /dnsaddr/NAME (repeatable; default: bootstrap/peers.txt)'
const SWARM_KEY_HELP = 'Private swarm: the key file its members hold (plexus-node swarm-key --out FILE)'
const STUN_HELP = 'STUN server for WebRTC, stun:HOST:PORT (repeatable; default: none)'
const DNS_RESOLVER_HELP = 'DNS server (IP or IP:PORT) for /dnsaddr, /dns4 and /dns6 bootstrap addresses instead of the system\'s'

/**
 * Before a command runs: the swarm key and DNS resolver for every node it makes, and the shipped
 * bootstrap list when a swarm command names no bootstrap peer (generate/serve/mcp without
 * --local; models always).
 */
async function networkMiddleware (a: Record<string, any>): Promise<void> {
  const command = a._?.[0]
  if (!['generate', 'serve', 'mcp', 'models'].includes(command)) return
  for (const url of a.stun ?? []) if (!/^stun:[^\s/]+$/.test(url)) throw new Error(`bad --stun ${url}: expected stun:HOST:PORT`)
  setProcessNetwork({
    // servers behind NAT announce relayed and WebRTC addresses: dial those too (direct ones first)
    dialRelayed: true,
    ...(a.stun != null && a.stun.length > 0 ? { stun: a.stun } : {}),
    ...(a['swarm-key'] != null ? { swarmKey: await readSwarmKey(a['swarm-key']), onSwarmKeyMismatch: reportMismatches('plexus-client') } : {}),
    ...(a['dns-resolver'] != null ? { dnsResolver: checkDnsServer(a['dns-resolver']) } : {})
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
  const expected = ['SwarmKeyError', 'DnsAddrError', 'YError', 'UsageError', 'ConfigError', 'ConfigFileError', 'CheckpointError', 'GgufError', 'WeightsMismatchError', 'BackendError', 'SpanError', 'RangeError', 'NoRouteError', 'RemoteError', 'PeerFailure', 'ModelFetchError', 'TrustError', 'SwarmUnreachableError', 'SpeculativeError'].includes(err?.name) || /^bad bootstrap|^cannot reach|^could not|^no bootstrap peers|^bad --stun/.test(String(err?.message))
  fail(expected ? err.message : (err?.stack ?? String(err)), expected ? 2 : 1, { error: err?.name ?? 'Error', ...(err?.code != null ? { code: err.code } : {}) })
}

configureLoggingFromArgv(hideBin(process.argv), '[plexus] ')
const argv = ((): string[] => {
  try {
    return withConfig(hideBin(process.argv), {
      schema: 'client-config',
      commands: { generate: ['logging', 'source', 'generate'], serve: ['logging', 'source', 'serving', 'serve'], mcp: ['logging', 'source', 'serving'], models: ['logging', 'models'] }
    })
  } catch (err) { return report(err) }
})()
configureLoggingFromArgv(argv, '[plexus] ')

await yargs(argv)
  .scriptName('plexus-client')
  .middleware(networkMiddleware)
  .option('config', { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/client-config.schema.json); flags and PLEXUS_* variables override it' })
  .option('log-level', { choices: LOG_LEVELS, default: 'info', describe: 'Least severe messages written to stderr (debug also turns on libp2p\'s plexus:* debug logs)' })
  .option('log-format', { choices: LOG_FORMATS, default: 'text', describe: 'Messages and progress on stderr as text lines or one JSON object per line' })
  .usage('$0 <command> [options]\n\nRun a language model on your own machine or across a Plexus swarm.')
  .command('generate', 'Generate text from a prompt', (y) => y
    .usage('$0 generate (--local | --bootstrap MULTIADDR) --model DIR|NAME|ID (--prompt TEXT | --token-ids 1,2,3) [options]\n\n' +
      'Streams the generated text to stdout as it is produced (token ids when the model has no tokenizer).')
    .option('local', { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' })
    .option('bootstrap', { type: 'array', string: true, describe: BOOTSTRAP_HELP })
    .option('swarm-key', { type: 'string', describe: SWARM_KEY_HELP })
    .option('dns-resolver', { type: 'string', describe: DNS_RESOLVER_HELP })
    .option('stun', { type: 'array', string: true, describe: STUN_HELP })
    .option('wire-dtype', { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' })
    .option('forward', { type: 'boolean', default: false, describe: 'Servers push activations straight to the next server of the route (n + 1 transfers per token instead of 2n); --no-forward: every hop answers the client' })
    .option('model', { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file; with --bootstrap also a model name, id or id prefix (≥ 8 hex digits) fetched from the swarm' })
    .option('cache-dir', { type: 'string', describe: 'Where models fetched from the swarm are kept (default: ~/.cache/plexus/models; $PLEXUS_CACHE_DIR moves ~/.cache/plexus)' })
    .option('quantize', { type: 'string', describe: QUANTIZE_HELP })
    .option('prompt', { type: 'string', describe: 'Prompt text (needs tokenizer.json)' })
    .option('token-ids', { type: 'string', describe: 'Prompt as comma-separated token ids, e.g. 1,450,4996' })
    .option('chat', { type: 'boolean', default: false, describe: "Wrap the prompt in the model's chat template as a user message" })
    .option('max-tokens', { type: 'number', default: 64, describe: 'Most tokens to generate' })
    .option('temperature', { type: 'number', default: 0, describe: '0 = greedy; higher = more random' })
    .option('top-k', { type: 'number', describe: 'Sample among the k most likely tokens' })
    .option('top-p', { type: 'number', describe: 'Sample among the most likely tokens whose probabilities add up to p' })
    .option('seed', { type: 'number', describe: 'Seed for reproducible sampling' })
    .option('ignore-eos', { type: 'boolean', default: false, describe: 'Keep generating past end-of-sequence tokens' })
    .option('backend', { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' })
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object (token_ids, text, tokens_per_second, ...) instead of streaming' })
    .option('trust', { choices: ['fast', 'verified', 'attested'], default: 'fast', describe: "fast: take servers' outputs as they come; verified: verifier peers re-compute a share of the steps, and a wrong one is rolled back and re-run elsewhere; attested: not supported yet" })
    .option('check-rate', { type: 'number', default: 0.1, describe: 'With --trust verified: the fraction of hops whose every step a verifier re-computes (0..1)' })
    .option('trust-verifier', { type: 'array', string: true, describe: 'Peer id of a verifier whose fraud reports and reputation records alone are believed (repeatable)' })
    .option('check-every', { type: 'number', default: 8, hidden: true, describe: 'With --trust verified: steps between checks' })
    .option('speculate', { type: 'number', describe: `Speculative decoding: draft up to k tokens (1..${MAX_SPECULATE}) and check them in one step through the blocks; same output (greedy) or same distribution (sampling), k adapts to the acceptance rate` })
    .option('draft', { choices: ['prompt-lookup', 'model'], describe: 'With --speculate: draft by looking up the context\'s last tokens earlier in it (prompt-lookup, the default without --draft-model), or with --draft-model' })
    .option('draft-model', { type: 'string', describe: 'With --speculate: a small model directory or .gguf file with the same tokenizer that drafts on this machine' })
    .option('draft-blocks', { type: 'number', describe: 'With --draft-model: use only its first N blocks (and its head)' })
    .example('$0 generate --local --model ./models/small --prompt "The swarm"', 'stream text from a local model')
    .example('$0 generate --local --model ./models/tiny --token-ids 1,5,9 --max-tokens 8 --json', 'token ids in, JSON out')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model ./models/small --prompt "Hi"', 'through a swarm')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi"', 'through a swarm, fetching the client parts from its peers')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi" --trust verified --check-rate 0.25', 'spot-check a quarter of the hops')
    .check((a) => {
      if (!Number.isInteger(a['max-tokens']) || a['max-tokens'] < 0) return '--max-tokens must be a non-negative integer'
      const spec = checkSpeculate(a)
      if (spec !== true) return spec
      const q = checkQuantize(a)
      return q !== true ? q : checkTrustFlags(a)
    }),
  async (argv) => { await runGenerate(argv as unknown as GenerateArgs) })
  .command('models', 'List the models a swarm serves and how many servers hold each block', (y) => y
    .option('bootstrap', { type: 'array', string: true, describe: BOOTSTRAP_HELP })
    .option('swarm-key', { type: 'string', describe: SWARM_KEY_HELP })
    .option('dns-resolver', { type: 'string', describe: DNS_RESOLVER_HELP })
    .option('stun', { type: 'array', string: true, describe: STUN_HELP })
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object' })
    .example('$0 models --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW...', 'what can this swarm run?'),
  async (argv) => { await runModels(argv as unknown as ModelsArgs) })
  .command('serve', 'Serve models over HTTP with OpenAI-, Anthropic- and Ollama-compatible APIs and MCP', (y) => servingOptions(y)
    .usage('$0 serve (--bootstrap MULTIADDR... [--model DIR|NAME|ID] | --local --model DIR) [--port 9337] [--host 127.0.0.1] [--api-key KEY] [--max-concurrent N]\n\n' +
      'OpenAI: /v1/models, /v1/chat/completions, /v1/completions; Anthropic: /v1/messages; Ollama: /api/generate, /api/chat, /api/tags, /api/show, /api/ps; MCP (streamable HTTP): /mcp; Prometheus: /metrics.\n' +
      'Through a swarm, every model the swarm serves is available: a request names it in its model field, and its client parts are fetched on first use.')
    .option('port', { type: 'number', default: 9337, describe: 'TCP port (0 = any free port)' })
    .option('host', { type: 'string', default: '127.0.0.1', describe: 'Address to listen on (loopback by default; others need --api-key to be safe)' })
    .option('api-key', { type: 'string', describe: 'Require this key (Authorization: Bearer KEY or x-api-key: KEY); default $PLEXUS_API_KEY' })
    .option('cors', { type: 'array', string: true, describe: "Web origin (https://app.example) allowed to call the API from a browser; '*' allows any (repeatable). Pages on this machine always may" })
    .option('allow-host', { type: 'array', string: true, describe: 'Host name requests may be addressed to besides loopback names, e.g. behind a reverse proxy (repeatable; default: any name when --host is not loopback)' })
    .option('request-timeout', { type: 'number', default: 30, describe: "Seconds a request's headers and body may take to arrive (slow or half-sent bodies are cut off)" })
    .option('max-connections', { type: 'number', default: 256, describe: 'HTTP connections open at once; more are closed on accept' })
    .option('json', { type: 'boolean', default: false, describe: 'Print a JSON ready event ({ event, url, model }) on stdout' })
    .example('$0 serve --local --model ./models/tiny', 'serve a local model on http://127.0.0.1:9337')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --api-key s3cret', 'serve every model of a swarm')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small', 'open the swarm\'s model "small" at start')
    .check((a) => {
      if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) return '--port must be an integer in 0..65535'
      if (!(a['request-timeout'] > 0)) return '--request-timeout must be a number of seconds > 0'
      if (!Number.isInteger(a['max-connections']) || a['max-connections'] < 1) return '--max-connections must be an integer ≥ 1'
      return checkServing(a)
    }),
  async (argv) => { await runServe(argv as unknown as ServeArgs) })
  .command('mcp', 'Serve models to MCP clients (Claude Desktop, IDEs, agents) over stdin/stdout', (y) => servingOptions(y)
    .usage('$0 mcp (--bootstrap MULTIADDR... [--model DIR|NAME|ID] | --local --model DIR) [options]\n\n' +
      'An MCP server on stdio with the tools generate, chat, list_models and swarm_status; it logs to stderr only.\n' +
      'The HTTP gateway (plexus-client serve) offers the same tools at /mcp (streamable HTTP).')
    .example('$0 mcp --local --model ./models/small', 'one local model')
    .example('$0 mcp --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW...', 'every model of a swarm')
    .epilog('In an MCP client\'s configuration (Claude Desktop: claude_desktop_config.json):\n' +
      '  { "mcpServers": { "plexus": { "command": "npx",\n' +
      '      "args": ["plexus-client", "mcp", "--bootstrap", "/ip4/192.168.1.10/tcp/31337/p2p/12D3KooW..."] } } }')
    .check(checkServing),
  async (argv) => { await runMcp(argv as unknown as McpArgs) })
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
