import yargs from 'yargs'
import { hideBin } from 'yargs/helpers'
import { BACKENDS, QUANT_FORMATS, isQuantFormat } from '@plexus/runtime'
import { withConfig } from '@plexus/p2p'
import { runBootstrap, runJoin } from './commands.ts'
import type { JoinArgs, BootstrapArgs } from './commands.ts'

const EXPECTED = new Set(['YError', 'UsageError', 'ConfigError', 'ConfigFileError', 'CheckpointError', 'GgufError', 'WeightsMismatchError', 'BackendError', 'SpanError', 'RecordError'])

function report (err: any): never {
  // a failed yargs check rejects with its message string
  if (typeof err === 'string') { process.stderr.write(`plexus-node: ${err}\nRun plexus-node --help for usage.\n`); process.exit(2) }
  const expected = EXPECTED.has(err?.name) || /^(bad|cannot|no |could not)/.test(String(err?.message))
  process.stderr.write(`plexus-node: ${expected ? err.message : (err?.stack ?? String(err))}\n`)
  process.exit(expected ? 2 : 1)
}

const common = (y: any): any => y
  .option('listen', { type: 'array', string: true, default: ['/ip4/127.0.0.1/tcp/0'], describe: 'Multiaddrs to listen on, e.g. /ip4/0.0.0.0/tcp/31337' })
  .option('announce', { type: 'array', string: true, describe: 'Addresses to advertise instead of the listen addresses (e.g. a forwarded port)' })
  .option('key', { type: 'string', describe: 'Key file: created on first run, giving this node a stable peer id' })
  .option('webrtc', { type: 'boolean', default: false, describe: 'Also reachable over WebRTC (for peers behind NAT)' })
  .option('json', { type: 'boolean', default: false, describe: 'Log events as JSON lines on stdout' })
  .option('config', { type: 'string', describe: 'YAML or JSON file of flags (keys: the flags without "--"; schemas/node-config.schema.json); flags and PLEXUS_* variables override it' })

const argv = ((): string[] => {
  try {
    return withConfig(hideBin(process.argv), { schema: 'node-config', commands: { bootstrap: ['common'], join: ['common', 'join'] } })
  } catch (err) { return report(err) }
})()

await yargs(argv)
  .scriptName('plexus-node')
  .usage('$0 <command> [options]\n\nContribute your machine to a Plexus swarm.')
  .command('bootstrap', 'Run a bootstrap peer: a DHT server that serves no blocks; others join through it', (y) => common(y)
    .example('$0 bootstrap --listen /ip4/0.0.0.0/tcp/31337 --key bootstrap.key', 'a bootstrap peer with a stable address')
  , async (argv) => { await runBootstrap(argv as unknown as BootstrapArgs) })
  .command('join', 'Serve blocks of a model to the swarm', (y) => common(y)
    .option('bootstrap', { type: 'array', string: true, demandOption: true, describe: 'Multiaddr of a bootstrap peer, ending in /p2p/<peer id> (repeatable)' })
    .option('model', { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors) or a .gguf file' })
    .option('quantize', { type: 'string', describe: `Quantize the blocks' linear weights at load with llama.cpp's algorithms (${QUANT_FORMATS.join(', ')}); a different model id from the unquantized weights, shared by every node using the same format` })
    .option('blocks', { type: 'string', describe: 'Blocks to serve, as start:end (end exclusive), e.g. 0:8; default: as many as --memory holds, where the swarm needs them most' })
    .option('memory', { type: 'number', describe: 'MiB for weights and KV cache (default: 70% of the memory free at start)' })
    .option('rebalance-interval', { type: 'number', default: 60, describe: 'Seconds between checks whether moving would speed up the swarm (0: never move; ignored with --blocks)' })
    .option('fault-perturb', { type: 'string', hidden: true, describe: 'TESTING ONLY: with probability P per step add noise of SCALE × RMS to outputs ("P,SCALE")' })
    .option('fault-skip', { type: 'number', hidden: true, describe: 'TESTING ONLY: with probability P per step return the input as if the blocks were skipped' })
    .option('metrics-port', { type: 'number', describe: 'Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)' })
    .option('metrics-host', { type: 'string', default: '127.0.0.1', describe: 'Address for --metrics-port' })
    .option('balance-factor', { type: 'number', default: 1.2, describe: "Move only when the swarm's slowest block would get this many times faster" })
    .option('remeasure', { type: 'boolean', default: false, describe: 'Measure this node\'s throughput at start even when a figure measured in the last 7 days is cached' })
    .option('backend', { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest available: a GPU through webgpu, tensorflow, wasm, cpu; webgpu named explicitly also runs on a software adapter)' })
    .option('max-sessions', { type: 'number', default: 64, describe: 'Most concurrent inference sessions' })
    .option('cache-mb', { type: 'number', default: 2048, describe: 'KV-cache budget for all sessions, MiB' })
    .option('kv-cache', { choices: ['f32', 'f16'], default: 'f32', describe: 'Precision of the KV cache on a GPU (webgpu): f16 holds twice the sessions in the same budget' })
    .option('verify', { type: 'boolean', default: false, describe: "Be a verifier: re-compute steps clients send for spot checks (of --blocks, default all) and publish servers' reputation; serves no sessions" })
    .option('tolerance', { type: 'number', describe: 'With --verify: largest honest error accepted (max |diff| / RMS), default 0.02' })
    .option('offer-head', { type: 'boolean', describe: "Hand out the model's client parts (default: when serving the first or last block)" })
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --blocks 0:16', 'serve the first 16 blocks')
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --verify', 'spot-check the servers of this model')
    .check((a: any) => {
      if (a.quantize != null && !isQuantFormat(a.quantize)) return `--quantize ${a.quantize}: expected one of ${QUANT_FORMATS.join(', ')}`
      if (a.blocks != null && !/^\d+:\d+$/.test(a.blocks)) return `--blocks must look like start:end (got "${a.blocks}")`
      if (!(a['max-sessions'] >= 1)) return '--max-sessions must be at least 1'
      if (!(a['cache-mb'] > 0)) return '--cache-mb must be positive'
      if (a.memory != null && !(a.memory > a['cache-mb'])) return `--memory must exceed --cache-mb (${a['cache-mb']} MiB)`
      if (!(a['rebalance-interval'] >= 0)) return '--rebalance-interval must be ≥ 0'
      if (!(a['balance-factor'] >= 1)) return '--balance-factor must be ≥ 1'
      if (a.tolerance != null && !(a.tolerance > 0)) return '--tolerance must be positive'
      if (a.tolerance != null && a.verify !== true) return '--tolerance needs --verify'
      return true
    })
  , async (argv) => { await runJoin(argv as unknown as JoinArgs) })
  .demandCommand(1, 'Choose a command (see --help)')
  .strict()
  .fail((msg, err) => {
    // YError: yargs' own validation (bad flags, failed checks) — a usage mistake, not a crash
    if (err != null && err.name !== 'YError') report(err)
    msg = msg ?? err?.message
    process.stderr.write(`plexus-node: ${msg}\nRun plexus-node --help for usage.\n`)
    process.exit(2)
  })
  .help()
  .parseAsync()
  .catch(report)
