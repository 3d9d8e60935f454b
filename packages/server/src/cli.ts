import yargs from 'yargs'
import { hideBin } from 'yargs/helpers'
import { BACKENDS, QUANT_FORMATS, isQuantFormat } from '@plexus/runtime'
import { withConfig, createLog, configureLoggingFromArgv, logSettings, LOG_LEVELS, LOG_FORMATS } from '@plexus/p2p'
import { runBootstrap, runJoin, runSwarmKey } from './commands.ts'
import type { JoinArgs, BootstrapArgs } from './commands.ts'

const EXPECTED = new Set(['SwarmKeyError', 'DnsAddrError', 'YError', 'UsageError', 'ConfigError', 'ConfigFileError', 'CheckpointError', 'GgufError', 'WeightsMismatchError', 'BackendError', 'SpanError', 'RecordError'])

const log = createLog('node')

/** A usage mistake: its message, then (in text) where to read more. */
function usage (msg: string): never {
  log.error(msg, { code: 'usage' })
  if (logSettings().format === 'text') process.stderr.write('Run plexus-node --help for usage.\n')
  process.exit(2)
}

function report (err: any): never {
  // a failed yargs check rejects with its message string
  if (typeof err === 'string') usage(err)
  const expected = EXPECTED.has(err?.name) || /^(bad|cannot|no |could not)/.test(String(err?.message))
  log.error(expected ? err.message : (err?.stack ?? String(err)), { error: err?.name ?? 'Error', ...(err?.code != null ? { code: err.code } : {}) })
  process.exit(expected ? 2 : 1)
}

const common = (y: any): any => y
  .option('listen', { type: 'array', string: true, describe: 'Multiaddrs to listen on (default: every interface, IPv4 and IPv6, TCP port 31337, or a free port when that one is taken)' })
  .option('announce', { type: 'array', string: true, describe: 'Addresses to advertise instead of the ones found (e.g. a forwarded port); loopback and link-local ones never reach other machines\' peers' })
  .option('swarm-key', { type: 'string', describe: 'Private swarm: the key file every member holds (plexus-node swarm-key --out FILE); peers without it cannot connect' })
  .option('dns-resolver', { type: 'string', describe: 'DNS server (IP or IP:PORT) for /dnsaddr, /dns4 and /dns6 bootstrap addresses instead of the system\'s' })
  .option('key', { type: 'string', describe: 'Key file: created on first run, giving this node a stable peer id' })
  .option('webrtc', { type: 'boolean', describe: 'Reachable through relays and WebRTC, for a node behind NAT (default: when none of its addresses is public)' })
  .option('relay', { type: 'boolean', describe: 'Relay connections for peers behind NAT (default: on for bootstrap peers)' })
  .option('stun', { type: 'array', string: true, describe: 'STUN server for WebRTC, stun:HOST:PORT (repeatable; default: none)' })
  .option('json', { type: 'boolean', default: false, describe: 'Log events as JSON lines on stdout' })
  .option('log-level', { choices: LOG_LEVELS, default: 'info', describe: 'Least severe messages written to stderr (debug also turns on libp2p\'s plexus:* debug logs)' })
  .option('log-format', { choices: LOG_FORMATS, default: 'text', describe: 'Messages and progress on stderr as text lines or one JSON object per line' })
  .option('config', { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/node-config.schema.json); flags and PLEXUS_* variables override it' })

configureLoggingFromArgv(hideBin(process.argv), 'plexus-node: ')
const argv = ((): string[] => {
  try {
    return withConfig(hideBin(process.argv), { schema: 'node-config', commands: { bootstrap: ['common', 'bootstrap'], join: ['common', 'join'], 'swarm-key': ['swarm-key'] } })
  } catch (err) { return report(err) }
})()
configureLoggingFromArgv(argv, 'plexus-node: ')

await yargs(argv)
  .scriptName('plexus-node')
  .usage('$0 <command> [options]\n\nContribute your machine to a Plexus swarm.')
  .command('bootstrap', 'Run a bootstrap peer: a DHT server that serves no blocks; others join through it', (y) => common(y)
    .option('dnsaddr', { type: 'string', describe: 'A DNS name for this swarm\'s bootstrap peers: print the TXT records that make /dnsaddr/NAME find this one' })
    .option('dashboard-port', { type: 'number', describe: 'Serve the swarm dashboard (a web page) at http://HOST:PORT/ (0: any free port)' })
    .option('dashboard-host', { type: 'string', default: '127.0.0.1', describe: 'Address for --dashboard-port (loopback by default: the page shows the swarm\'s peers)' })
    .example('$0 bootstrap --listen /ip4/0.0.0.0/tcp/31337 --key bootstrap.key', 'a bootstrap peer with a stable address')
    .example('$0 bootstrap --key bootstrap.key --dnsaddr bootstrap.example.org', 'and the DNS records to publish for it')
  , async (argv) => { await runBootstrap(argv as unknown as BootstrapArgs) })
  .command('swarm-key', 'Make the key of a new private swarm (give the file to every member: --swarm-key FILE)', (y) => y
    .option('out', { type: 'string', demandOption: true, describe: 'File to write (mode 0600; an existing file is never overwritten)' })
    .example('$0 swarm-key --out swarm.key', 'a new private swarm')
  , async (argv) => { await runSwarmKey(argv as unknown as { out: string }) })
  .command('join', 'Serve blocks of a model to the swarm', (y) => common(y)
    .option('bootstrap', { type: 'array', string: true, describe: 'Bootstrap peer: /ip4, /ip6, /dns4 or /dns6 multiaddr ending in /p2p/<peer id>, or /dnsaddr/NAME (repeatable; default: bootstrap/peers.txt)' })
    .option('model', { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors) or a .gguf file' })
    .option('quantize', { type: 'string', describe: `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); a different model id from the unquantized weights, shared by every node using the same format` })
    .option('blocks', { type: 'string', describe: 'Blocks to serve, as start:end (end exclusive), e.g. 0:8; default: as many as --memory holds, where the swarm needs them most' })
    .option('memory', { type: 'number', describe: 'MiB for weights and KV cache (default: 70% of the memory free at start)' })
    .option('rebalance-interval', { type: 'number', default: 60, describe: 'Seconds between checks whether moving would speed up the swarm (0: never move; ignored with --blocks)' })
    .option('fault-perturb', { type: 'string', hidden: true, describe: 'TESTING ONLY: with probability P per step add noise of SCALE × RMS to outputs ("P,SCALE")' })
    .option('fault-skip', { type: 'number', hidden: true, describe: 'TESTING ONLY: with probability P per step return the input as if the blocks were skipped' })
    .option('metrics-port', { type: 'number', describe: 'Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)' })
    .option('metrics-host', { type: 'string', default: '127.0.0.1', describe: 'Address for --metrics-port' })
    .option('dashboard-port', { type: 'number', describe: 'Serve the swarm dashboard (a web page) at http://HOST:PORT/ (0: any free port)' })
    .option('dashboard-host', { type: 'string', default: '127.0.0.1', describe: 'Address for --dashboard-port (loopback by default: the page shows the swarm\'s peers)' })
    .option('balance-factor', { type: 'number', default: 1.2, describe: "Move only when the swarm's slowest block would get this many times faster" })
    .option('remeasure', { type: 'boolean', default: false, describe: 'Measure this node\'s throughput at start even when a figure measured in the last 7 days is cached' })
    .option('backend', { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' })
    .option('max-sessions', { type: 'number', default: 64, describe: 'Most concurrent inference sessions' })
    .option('max-sessions-per-peer', { type: 'number', default: 16, describe: 'Most sessions one peer may hold open here at once (busy beyond)' })
    .option('max-kv-share-per-peer', { type: 'number', default: 0.5, describe: 'Share of the KV-cache budget (--cache-mb) one peer\'s sessions may reserve together, 0–1' })
    .option('max-step-tokens', { type: 'number', default: 4096, describe: 'Most tokens one step may carry (too-long beyond; never more than the model\'s context)' })
    .option('max-chunk-tokens', { type: 'number', default: 256, describe: 'A long step (a prefill) runs in chunks of at most this many tokens: its memory grows linearly with its tokens' })
    .option('session-idle-timeout', { type: 'number', default: 300, describe: 'Seconds without a step after which a session is closed (truncates do not count)' })
    .option('max-session-lifetime', { type: 'number', default: 3600, describe: 'Seconds after which any session is closed, however busy' })
    .option('cache-mb', { type: 'number', default: 2048, describe: 'KV-cache budget for all sessions, MiB' })
    .option('kv-cache', { choices: ['f32', 'f16'], default: 'f32', describe: 'Precision of the KV cache on a GPU (webgpu): f16 holds twice the sessions in the same budget' })
    .option('verify', { type: 'boolean', default: false, describe: "Be a verifier: re-compute steps clients send for spot checks (of --blocks, default all) and publish servers' reputation; serves no sessions" })
    .option('tolerance', { type: 'number', describe: 'With --verify: largest honest error accepted (max |diff| / RMS), default 0.02' })
    .option('max-rechecks', { type: 'number', describe: 'With --verify: fraud reports re-computed at once (default 2; 8 more may wait, others are refused busy)' })
    .option('offer-head', { type: 'boolean', describe: "Hand out the model's client parts (default: when serving the first or last block)" })
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --blocks 0:16', 'serve the first 16 blocks')
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --verify', 'spot-check the servers of this model')
    .check((a: any) => {
      if (a.quantize != null && !isQuantFormat(a.quantize)) return `--quantize ${a.quantize}: expected one of ${QUANT_FORMATS.join(', ')}`
      if (a.blocks != null && !/^\d+:\d+$/.test(a.blocks)) return `--blocks must look like start:end (got "${a.blocks}")`
      if (!(a['max-sessions'] >= 1)) return '--max-sessions must be at least 1'
      if (!(a['cache-mb'] > 0)) return '--cache-mb must be positive'
      for (const f of ['max-sessions-per-peer', 'max-step-tokens', 'max-chunk-tokens']) if (!Number.isInteger(a[f]) || a[f] < 1) return `--${f} must be an integer ≥ 1`
      if (!(a['max-kv-share-per-peer'] > 0 && a['max-kv-share-per-peer'] <= 1)) return '--max-kv-share-per-peer must be in (0, 1]'
      if (!(a['session-idle-timeout'] > 0) || !(a['max-session-lifetime'] > 0)) return '--session-idle-timeout and --max-session-lifetime must be positive'
      if (a.memory != null && !(a.memory > a['cache-mb'])) return `--memory must exceed --cache-mb (${a['cache-mb']} MiB)`
      if (!(a['rebalance-interval'] >= 0)) return '--rebalance-interval must be ≥ 0'
      if (!(a['balance-factor'] >= 1)) return '--balance-factor must be ≥ 1'
      if (a.tolerance != null && !(a.tolerance > 0)) return '--tolerance must be positive'
      if (a.tolerance != null && a.verify !== true) return '--tolerance needs --verify'
      if (a['max-rechecks'] != null && (!Number.isInteger(a['max-rechecks']) || a['max-rechecks'] < 1 || a.verify !== true)) return '--max-rechecks needs --verify and an integer ≥ 1'
      return true
    })
  , async (argv) => { await runJoin(argv as unknown as JoinArgs) })
  .demandCommand(1, 'Choose a command (see --help)')
  .strict()
  .fail((msg, err) => {
    // YError: yargs' own validation (bad flags, failed checks) — a usage mistake, not a crash
    if (err != null && err.name !== 'YError') report(err)
    usage(msg ?? err?.message)
  })
  .help()
  .parseAsync()
  .catch(report)
