import yargs from 'yargs'
import { hideBin } from 'yargs/helpers'
import { BACKENDS } from '@plexus/runtime'
import { runGenerate } from './commands/generate.ts'
import type { GenerateArgs } from './commands/generate.ts'

/** Errors users can act on are printed as one line; anything else keeps its stack for a bug report. */
function report (err: any): never {
  const expected = ['UsageError', 'ConfigError', 'CheckpointError', 'BackendError', 'SpanError', 'RangeError'].includes(err?.name)
  process.stderr.write(`plexus-client: ${expected ? err.message : (err?.stack ?? String(err))}\n`)
  process.exit(expected ? 2 : 1)
}

await yargs(hideBin(process.argv))
  .scriptName('plexus-client')
  .usage('$0 <command> [options]\n\nRun a language model on your own machine or across a Plexus swarm.')
  .command('generate', 'Generate text from a prompt', (y) => y
    .usage('$0 generate (--local | --bootstrap MULTIADDR) --model DIR (--prompt TEXT | --token-ids 1,2,3) [options]\n\n' +
      'Streams the generated text to stdout as it is produced (token ids when the model has no tokenizer).')
    .option('local', { type: 'boolean', default: false, describe: 'Run every block in this process (no swarm)' })
    .option('bootstrap', { type: 'array', string: true, describe: 'Join a swarm through this peer (multiaddr ending in /p2p/<id>; repeatable)' })
    .option('wire-dtype', { choices: ['f32', 'f16', 'bf16'], default: 'f32', describe: 'Activation precision on the wire (f16 halves traffic)' })
    .option('model', { type: 'string', demandOption: true, describe: 'Hugging Face model directory (config.json, *.safetensors, tokenizer.json)' })
    .option('prompt', { type: 'string', describe: 'Prompt text (needs tokenizer.json)' })
    .option('token-ids', { type: 'string', describe: 'Prompt as comma-separated token ids, e.g. 1,450,4996' })
    .option('chat', { type: 'boolean', default: false, describe: "Wrap the prompt in the model's chat template as a user message" })
    .option('max-tokens', { type: 'number', default: 64, describe: 'Most tokens to generate' })
    .option('temperature', { type: 'number', default: 0, describe: '0 = greedy; higher = more random' })
    .option('top-k', { type: 'number', describe: 'Sample among the k most likely tokens' })
    .option('top-p', { type: 'number', describe: 'Sample among the most likely tokens whose probabilities add up to p' })
    .option('seed', { type: 'number', describe: 'Seed for reproducible sampling' })
    .option('ignore-eos', { type: 'boolean', default: false, describe: 'Keep generating past end-of-sequence tokens' })
    .option('backend', { choices: [...BACKENDS, 'auto'], default: 'auto', describe: 'Compute backend (auto = fastest installed: tensorflow, wasm, cpu)' })
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object (token_ids, text, tokens_per_second, ...) instead of streaming' })
    .example('$0 generate --local --model ./models/small --prompt "The swarm"', 'stream text from a local model')
    .example('$0 generate --local --model ./models/tiny --token-ids 1,5,9 --max-tokens 8 --json', 'token ids in, JSON out')
    .example('$0 generate --bootstrap /ip4/127.0.0.1/tcp/31337/p2p/12D3KooW... --model ./models/small --prompt "Hi"', 'through a swarm')
    .check((a) => {
      if (!Number.isInteger(a['max-tokens']) || a['max-tokens'] < 0) throw new Error('--max-tokens must be a non-negative integer')
      return true
    }),
  async (argv) => { await runGenerate(argv as unknown as GenerateArgs) })
  .demandCommand(1, 'Choose a command (see --help)')
  .strict()
  .fail((msg, err) => {
    if (err != null) report(err)
    process.stderr.write(`plexus-client: ${msg}\nRun plexus-client --help for usage.\n`)
    process.exit(2)
  })
  .help()
  .parseAsync()
  .catch(report)
