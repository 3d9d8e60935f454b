// plexus-client's flags, as option groups (see @plexus/p2p's cli-options.ts), and the parsed
// arguments of each command, derived from the groups it registers.
import type { Options } from 'yargs'
import { BACKENDS, QUANT_FORMATS, MAX_SPECULATE, TRUST_LEVELS } from '@plexus/runtime'
import { dialFlags, loggingFlags } from '@plexus/p2p'
import type { FlagValues } from '@plexus/p2p'

const QUANTIZE_HELP = `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); with --bootstrap, use the swarm's nodes that quantize the same way`

/** The tool's own, on every command: a file of flags, and logging. */
export const toolFlags = {
  config: { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/client-config.schema.json); flags and PLEXUS_* variables override it' },
  ...loggingFlags
} as const satisfies Record<string, Options>

/** How a command reaches a swarm (generate, serve, mcp, models). */
export const networkFlags = {
  bootstrap: { type: 'array', string: true, describe: 'Join a swarm through this peer: a multiaddr ending in /p2p/<id>, or /dnsaddr/NAME (repeatable; default: bootstrap/peers.txt)' },
  'swarm-key': { type: 'string', describe: 'Private swarm: the key file its members hold (plexus-node swarm-key --out FILE)' },
  ...dialFlags
} as const satisfies Record<string, Options>

/** Where the blocks run (here, or through the swarm) and how activations travel between hops. */
export const placementFlags = {
  local: { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' },
  'wire-dtype': { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' },
  forward: { type: 'boolean', default: true, describe: 'Servers push activations straight to the next server of the route (n + 1 transfers per token instead of 2n; relayed by the client where servers cannot reach each other); --no-forward: every hop answers the client' }
} as const satisfies Record<string, Options>

/** How this machine computes its parts of a model, and where models fetched from the swarm are kept. */
export const computeFlags = {
  'cache-dir': { type: 'string', describe: 'Where models fetched from the swarm are kept (default: ~/.cache/plexus/models; $PLEXUS_CACHE_DIR moves ~/.cache/plexus)' },
  quantize: { type: 'string', describe: QUANTIZE_HELP },
  backend: { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' }
} as const satisfies Record<string, Options>

/** Spot checks under --trust verified (the --trust flag itself is each command's). */
export const checkFlags = {
  'check-rate': { type: 'number', default: 0.1, describe: 'With --trust verified: the fraction of hops whose every step a verifier re-computes (0..1)' },
  'trust-verifier': { type: 'array', string: true, describe: 'Peer id of a verifier whose fraud reports and reputation records alone are believed (repeatable)' }
} as const satisfies Record<string, Options>

/** generate: the model, the prompt, the output and the trust level. */
export const generateFlags = {
  model: { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file; with --bootstrap also a model name, id or id prefix (≥ 8 hex digits) fetched from the swarm' },
  prompt: { type: 'string', describe: 'Prompt text (needs tokenizer.json)' },
  'token-ids': { type: 'string', describe: 'Prompt as comma-separated token ids, e.g. 1,450,4996' },
  chat: { type: 'boolean', default: false, describe: "Wrap the prompt in the model's chat template as a user message" },
  json: { type: 'boolean', default: false, describe: 'Print one JSON object (token_ids, text, tokens_per_second, ...) instead of streaming' },
  trust: { choices: TRUST_LEVELS, default: 'fast', describe: "fast: take servers' outputs as they come; verified: verifier peers re-compute a share of the steps, and a wrong one is rolled back and re-run elsewhere; attested: not supported yet" },
  'check-every': { type: 'number', default: 8, hidden: true, describe: 'With --trust verified: steps between checks' }
} as const satisfies Record<string, Options>

/** generate: how many tokens, and how each is picked. */
export const samplingFlags = {
  'max-tokens': { type: 'number', default: 64, describe: 'Most tokens to generate' },
  temperature: { type: 'number', default: 0, describe: '0 = greedy; higher = more random' },
  'top-k': { type: 'number', describe: 'Sample among the k most likely tokens' },
  'top-p': { type: 'number', describe: 'Sample among the most likely tokens whose probabilities add up to p' },
  seed: { type: 'number', describe: 'Seed for reproducible sampling' },
  'ignore-eos': { type: 'boolean', default: false, describe: 'Keep generating past end-of-sequence tokens' }
} as const satisfies Record<string, Options>

/** generate, serve and mcp: speculative decoding (a gateway drafts for every request it can). */
export const speculationFlags = {
  speculate: { type: 'number', describe: `Speculative decoding: draft up to k tokens (1..${MAX_SPECULATE}) and check them in one step through the blocks; same output (greedy) or same distribution (sampling), k adapts to the acceptance rate` },
  draft: { choices: ['prompt-lookup', 'model'], describe: 'With --speculate: draft by looking up the context\'s last tokens earlier in it (prompt-lookup, the default without --draft-model), or with --draft-model' },
  'draft-model': { type: 'string', describe: 'With --speculate: a small model directory or .gguf file with the same tokenizer that drafts on this machine' },
  'draft-blocks': { type: 'number', describe: 'With --draft-model: use only its first N blocks (and its head)' }
} as const satisfies Record<string, Options>

/** serve and mcp: which models a gateway answers for, how many at once, at what trust level. */
export const servingFlags = {
  model: { type: 'string', describe: 'Model directory or .gguf file (required with --local); with --bootstrap, a model opened at start (a directory, file, name, id or id prefix), the others on first use' },
  'max-models': { type: 'number', default: 4, describe: 'With --bootstrap: the most models open at once (each holds its embeddings and LM head)' },
  'max-concurrent': { type: 'number', default: 16, describe: 'Generations run at once, all models together; more wait their turn' },
  trust: { choices: TRUST_LEVELS, default: 'fast', describe: "Trust level of requests that name none (HTTP: X-Plexus-Trust). fast: take servers' outputs as they come; verified: verifier peers re-compute a share of the steps, and a wrong one is rolled back and re-run elsewhere; attested: not supported yet" }
} as const satisfies Record<string, Options>

/** serve: its HTTP server. */
export const httpFlags = {
  port: { type: 'number', default: 9337, describe: 'TCP port (0 = any free port)' },
  host: { type: 'string', default: '127.0.0.1', describe: 'Address to listen on (loopback by default; others need --api-key to be safe)' },
  'api-key': { type: 'string', describe: 'Require this key (Authorization: Bearer KEY or x-api-key: KEY); default $PLEXUS_API_KEY' },
  cors: { type: 'array', string: true, describe: "Web origin (https://app.example) allowed to call the API from a browser; '*' allows any (repeatable). Pages on this machine always may" },
  'allow-host': { type: 'array', string: true, describe: 'Host name requests may be addressed to besides loopback names, e.g. behind a reverse proxy (repeatable; default: any name when --host is not loopback)' },
  'request-timeout': { type: 'number', default: 30, describe: "Seconds a request's headers and body may take to arrive (slow or half-sent bodies are cut off)" },
  'max-connections': { type: 'number', default: 256, describe: 'HTTP connections open at once; more are closed on accept' },
  json: { type: 'boolean', default: false, describe: 'Print a JSON ready event ({ event, url, model }) on stdout' }
} as const satisfies Record<string, Options>

/** models: its output. */
export const modelsFlags = {
  json: { type: 'boolean', default: false, describe: 'Print one JSON object' }
} as const satisfies Record<string, Options>

/** Every group a model-running command registers but its own (generate, serve, mcp). */
type SwarmGroups = typeof networkFlags & typeof placementFlags & typeof computeFlags & typeof checkFlags

export type GenerateArgs = FlagValues<SwarmGroups & typeof generateFlags & typeof samplingFlags & typeof speculationFlags>
export type ServingArgs = FlagValues<SwarmGroups & typeof servingFlags & typeof speculationFlags>
export type ServeArgs = ServingArgs & FlagValues<typeof httpFlags>
export type McpArgs = ServingArgs
export type ModelsArgs = FlagValues<typeof networkFlags & typeof modelsFlags>
