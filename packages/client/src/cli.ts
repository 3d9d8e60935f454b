import yargs from 'yargs'
import type { Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { withConfig } from '@plexus/p2p'
import { BACKENDS, QUANT_FORMATS, isQuantFormat } from '@plexus/runtime'
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

const QUANTIZE_HELP = `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); with --bootstrap, use the swarm's nodes that quantize the same way`

/** --quantize: a usage error (string) or true. */
function checkQuantize (a: Record<string, any>): string | true {
  return a.quantize == null || isQuantFormat(a.quantize) ? true : `--quantize ${a.quantize}: expected one of ${QUANT_FORMATS.join(', ')}`
}

/** The flags of the commands that serve models to others (serve, mcp): which models, from where, how. */
function servingOptions<T> (y: Argv<T>) {
  return y
    .option('local', { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' })
    .option('bootstrap', { type: 'array', string: true, describe: 'Join a swarm through this peer (multiaddr ending in /p2p/<id>; repeatable)' })
    .option('model', { type: 'string', describe: 'Model directory or .gguf file (required with --local); with --bootstrap, a model opened at start (a directory, file, name, id or id prefix), the others on first use' })
    .option('max-models', { type: 'number', default: 4, describe: 'With --bootstrap: the most models open at once (each holds its embeddings and LM head)' })
    .option('cache-dir', { type: 'string', describe: 'Where models fetched from the swarm are kept (default: ~/.cache/plexus/models; $PLEXUS_CACHE_DIR moves ~/.cache/plexus)' })
    .option('wire-dtype', { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' })
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

/** Errors users can act on are printed as one line; anything else keeps its stack for a bug report. */
function report (err: any): never {
  // a failed yargs check rejects with its message string
  if (typeof err === 'string') { process.stderr.write(`plexus-client: ${err}\nRun plexus-client --help for usage.\n`); process.exit(2) }
  const expected = ['YError', 'UsageError', 'ConfigError', 'ConfigFileError', 'CheckpointError', 'GgufError', 'WeightsMismatchError', 'BackendError', 'SpanError', 'RangeError', 'NoRouteError', 'RemoteError', 'PeerFailure', 'ModelFetchError', 'TrustError', 'SwarmUnreachableError'].includes(err?.name) || /^bad bootstrap|^cannot reach|^could not/.test(String(err?.message))
  process.stderr.write(`plexus-client: ${expected ? err.message : (err?.stack ?? String(err))}\n`)
  process.exit(expected ? 2 : 1)
}

const argv = ((): string[] => {
  try {
    return withConfig(hideBin(process.argv), {
      schema: 'client-config',
      commands: { generate: ['source', 'generate'], serve: ['source', 'serving', 'serve'], mcp: ['source', 'serving'], models: ['models'] }
    })
  } catch (err) { return report(err) }
})()

await yargs(argv)
  .scriptName('plexus-client')
  .option('config', { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/client-config.schema.json); flags and PLEXUS_* variables override it' })
  .usage('$0 <command> [options]\n\nRun a language model on your own machine or across a Plexus swarm.')
  .command('generate', 'Generate text from a prompt', (y) => y
    .usage('$0 generate (--local | --bootstrap MULTIADDR) --model DIR|NAME|ID (--prompt TEXT | --token-ids 1,2,3) [options]\n\n' +
      'Streams the generated text to stdout as it is produced (token ids when the model has no tokenizer).')
    .option('local', { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' })
    .option('bootstrap', { type: 'array', string: true, describe: 'Join a swarm through this peer (multiaddr ending in /p2p/<id>; repeatable)' })
    .option('wire-dtype', { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' })
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
    .example('$0 generate --local --model ./models/small --prompt "The swarm"', 'stream text from a local model')
    .example('$0 generate --local --model ./models/tiny --token-ids 1,5,9 --max-tokens 8 --json', 'token ids in, JSON out')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model ./models/small --prompt "Hi"', 'through a swarm')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi"', 'through a swarm, fetching the client parts from its peers')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small --prompt "Hi" --trust verified --check-rate 0.25', 'spot-check a quarter of the hops')
    .check((a) => {
      if (!Number.isInteger(a['max-tokens']) || a['max-tokens'] < 0) return '--max-tokens must be a non-negative integer'
      const q = checkQuantize(a)
      return q !== true ? q : checkTrustFlags(a)
    }),
  async (argv) => { await runGenerate(argv as unknown as GenerateArgs) })
  .command('models', 'List the models a swarm serves and how many servers hold each block', (y) => y
    .option('bootstrap', { type: 'array', string: true, demandOption: true, describe: 'Multiaddr of a bootstrap peer (ending in /p2p/<id>; repeatable)' })
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
    .option('json', { type: 'boolean', default: false, describe: 'Print a JSON ready event ({ event, url, model }) on stdout' })
    .example('$0 serve --local --model ./models/tiny', 'serve a local model on http://127.0.0.1:9337')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --api-key s3cret', 'serve every model of a swarm')
    .example('$0 serve --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model small', 'open the swarm\'s model "small" at start')
    .check((a) => {
      if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) return '--port must be an integer in 0..65535'
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
    msg = msg ?? err?.message
    process.stderr.write(`plexus-client: ${msg}\nRun plexus-client --help for usage.\n`)
    process.exit(2)
  })
  .help()
  .parseAsync()
  .catch(report)
