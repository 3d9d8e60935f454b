import yargs from 'yargs'
import { hideBin } from 'yargs/helpers'
import { PlexusError } from '@plexus/runtime'
import { withConfig, createLog, configureLoggingFromArgv, logSettings, quantizeProblem } from '@plexus/p2p'
import { runBootstrap, runJoin, runSwarmKey } from './commands.ts'
import { nodeFlags, bootstrapFlags, servedModelFlags, sessionFlags, verifierFlags, swarmKeyFlags } from './cli-options.ts'

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
  if (err instanceof PlexusError) {
    log.error(err.message, { error: err.name, code: err.code })
    process.exit(err.exitCode)
  }
  // yargs' own validation is a usage mistake; anything else not ours is a bug: its stack, for a report
  const expected = err?.name === 'YError'
  log.error(expected ? err.message : (err?.stack ?? String(err)), { error: err?.name ?? 'Error', ...(err?.code != null ? { code: err.code } : {}) })
  process.exit(expected ? 2 : 1)
}

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
  .command('bootstrap', 'Run a bootstrap peer: a DHT server that serves no blocks; others join through it', (y) => y
    .options(nodeFlags)
    .options(bootstrapFlags)
    .example('$0 bootstrap --listen /ip4/0.0.0.0/tcp/31337 --key bootstrap.key', 'a bootstrap peer with a stable address')
    .example('$0 bootstrap --key bootstrap.key --dnsaddr bootstrap.example.org', 'and the DNS records to publish for it')
  , async (argv) => { await runBootstrap(argv) })
  .command('swarm-key', 'Make the key of a new private swarm (give the file to every member: --swarm-key FILE)', (y) => y
    .options(swarmKeyFlags)
    .example('$0 swarm-key --out swarm.key', 'a new private swarm')
  , async (argv) => { await runSwarmKey(argv) })
  .command('join', 'Serve blocks of a model to the swarm', (y) => y
    .options(nodeFlags)
    .options(servedModelFlags)
    .options(sessionFlags)
    .options(verifierFlags)
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --blocks 0:16', 'serve the first 16 blocks')
    .example('$0 join --bootstrap /ip4/192.168.1.10/tcp/31337/p2p/12D3KooW... --model ./llama --verify', 'spot-check the servers of this model')
    .check((a) => {
      const quantize = quantizeProblem(a.quantize)
      if (quantize != null) return quantize
      if (a.blocks != null && !/^\d+:\d+$/.test(a.blocks)) return `--blocks must look like start:end (got "${a.blocks}")`
      if (!(a['max-sessions'] >= 1)) return '--max-sessions must be at least 1'
      if (!(a['cache-mb'] > 0)) return '--cache-mb must be positive'
      for (const f of ['max-sessions-per-peer', 'max-step-tokens', 'max-chunk-tokens'] as const) if (!Number.isInteger(a[f]) || a[f] < 1) return `--${f} must be an integer ≥ 1`
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
  , async (argv) => { await runJoin(argv) })
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
