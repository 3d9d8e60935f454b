// plexus-node's flags, as option groups (see @plexus/p2p's cli-options.ts), and the parsed
// arguments of each command, derived from the groups it registers.
import type { Options } from 'yargs'
import { BACKENDS, QUANT_FORMATS } from '@plexus/runtime'
import { loggingFlags, nodeNetworkFlags } from '@plexus/p2p'
import type { FlagValues } from '@plexus/p2p'

/** Every command that runs a node: its network, identity, output and logging. */
export const nodeFlags = {
  ...nodeNetworkFlags,
  key: { type: 'string', describe: 'Key file: created on first run, giving this node a stable peer id' },
  json: { type: 'boolean', default: false, describe: 'Log events as JSON lines on stdout' },
  'max-buffered-mb': { type: 'number', default: 256, describe: 'MiB of incoming frames all streams together may hold at once (busy beyond; one peer at most a quarter)' },
  ...loggingFlags,
  config: { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/node-config.schema.json); flags and PLEXUS_* variables override it' }
} as const satisfies Record<string, Options>

/** The swarm dashboard (bootstrap and join). */
export const dashboardFlags = {
  'dashboard-port': { type: 'number', describe: 'Serve the swarm dashboard (a web page) at http://HOST:PORT/ (0: any free port)' },
  'dashboard-host': { type: 'string', default: '127.0.0.1', describe: 'Address for --dashboard-port (loopback by default: the page shows the swarm\'s peers)' }
} as const satisfies Record<string, Options>

export const bootstrapFlags = {
  dnsaddr: { type: 'string', describe: 'A DNS name for this swarm\'s bootstrap peers: print the TXT records that make /dnsaddr/NAME find this one' },
  ...dashboardFlags
} as const satisfies Record<string, Options>

/** Which model a joining node serves, which of its blocks, and on what. */
export const servedModelFlags = {
  bootstrap: { type: 'array', string: true, describe: 'Bootstrap peer: /ip4, /ip6, /dns4 or /dns6 multiaddr ending in /p2p/<peer id>, or /dnsaddr/NAME (repeatable; default: bootstrap/peers.txt)' },
  model: { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors) or a .gguf file' },
  quantize: { type: 'string', describe: `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); a different model id from the unquantized weights, shared by every node using the same format` },
  blocks: { type: 'string', describe: 'Blocks to serve, as start:end (end exclusive), e.g. 0:8; default: as many as --memory holds, where the swarm needs them most' },
  memory: { type: 'number', describe: 'MiB for weights and KV cache (default: 70% of the memory free at start)' },
  'rebalance-interval': { type: 'number', default: 60, describe: 'Seconds between checks whether moving would speed up the swarm (0: never move; ignored with --blocks)' },
  'fault-perturb': { type: 'string', hidden: true, describe: 'TESTING ONLY: with probability P per step add noise of SCALE × RMS to outputs ("P,SCALE")' },
  'fault-skip': { type: 'number', hidden: true, describe: 'TESTING ONLY: with probability P per step return the input as if the blocks were skipped' },
  'metrics-port': { type: 'number', describe: 'Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)' },
  'metrics-host': { type: 'string', default: '127.0.0.1', describe: 'Address for --metrics-port' },
  ...dashboardFlags,
  'balance-factor': { type: 'number', default: 1.2, describe: "Move only when the swarm's slowest block would get this many times faster" },
  remeasure: { type: 'boolean', default: false, describe: 'Measure this node\'s throughput at start even when a figure measured in the last 7 days is cached' },
  backend: { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' }
} as const satisfies Record<string, Options>

/** How many sessions a joining node holds, and how big each may grow. */
export const sessionFlags = {
  'max-sessions': { type: 'number', default: 64, describe: 'Most concurrent inference sessions' },
  'max-sessions-per-peer': { type: 'number', default: 16, describe: 'Most sessions one peer may hold open here at once (busy beyond)' },
  'max-kv-share-per-peer': { type: 'number', default: 0.5, describe: 'Share of the KV-cache budget (--cache-mb) one peer\'s sessions may reserve together, 0–1' },
  'max-step-tokens': { type: 'number', default: 4096, describe: 'Most tokens one step may carry (too-long beyond; never more than the model\'s context)' },
  'max-chunk-tokens': { type: 'number', default: 256, describe: 'A long step (a prefill) runs in chunks of at most this many tokens: its memory grows linearly with its tokens' },
  'session-idle-timeout': { type: 'number', default: 300, describe: 'Seconds without a step after which a session is closed (truncates do not count)' },
  'max-session-lifetime': { type: 'number', default: 3600, describe: 'Seconds after which any session is closed, however busy' },
  'cache-mb': { type: 'number', default: 2048, describe: 'KV-cache budget for all sessions, MiB' },
  'kv-cache': { choices: ['f32', 'f16'], default: 'f32', describe: 'Precision of the KV cache on a GPU (webgpu): f16 holds twice the sessions in the same budget' }
} as const satisfies Record<string, Options>

/** A verifier node's flags, and what a serving node hands out. */
export const verifierFlags = {
  verify: { type: 'boolean', default: false, describe: "Be a verifier: re-compute steps clients send for spot checks (of --blocks, default all) and publish servers' reputation; serves no sessions" },
  tolerance: { type: 'number', describe: 'With --verify: largest honest error accepted (max |diff| / RMS), default 0.02' },
  'max-rechecks': { type: 'number', describe: 'With --verify: fraud reports re-computed at once (default 2; 8 more may wait, others are refused busy)' },
  'max-checks-per-peer': { type: 'number', describe: 'With --verify: checks one peer may have in progress at once (default 4; busy beyond)' },
  'max-rechecks-per-peer': { type: 'number', describe: 'With --verify: re-checks one peer may have in progress at once (default 1; busy beyond)' },
  'offer-head': { type: 'boolean', describe: "Hand out the model's client parts (default: when serving the first or last block)" },
  forwarding: { type: 'boolean', default: true, describe: "Push activations to the next server of a client's route when it asks (--no-forwarding: refuse; such clients relay that route themselves)" }
} as const satisfies Record<string, Options>

export const swarmKeyFlags = {
  out: { type: 'string', demandOption: true, describe: 'File to write (mode 0600; an existing file is never overwritten)' }
} as const satisfies Record<string, Options>

export type NodeArgs = FlagValues<typeof nodeFlags>
export type BootstrapArgs = FlagValues<typeof nodeFlags & typeof bootstrapFlags>
export type JoinArgs = FlagValues<typeof nodeFlags & typeof servedModelFlags & typeof sessionFlags & typeof verifierFlags>
