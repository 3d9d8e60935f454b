// `npm start`: the demo. Makes the default model on first run (random weights, `small` shape,
// with a tokenizer), then generates text with it and prints the speed.
import { access } from 'node:fs/promises'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawn } from 'node:child_process'
import { makeModel } from './lib/model-maker.ts'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const DEFAULT_MODEL_DIR = join(ROOT, '.plexus', 'models', 'default-small')

async function exists (p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}

if (!(await exists(join(DEFAULT_MODEL_DIR, 'config.json'))) || !(await exists(join(DEFAULT_MODEL_DIR, 'tokenizer.json')))) {
  process.stdout.write(`Making the default model in ${DEFAULT_MODEL_DIR} (small shape: 12 blocks, hidden 768, random weights)…\n`)
  await makeModel({ shape: 'small', dtype: 'bf16', out: DEFAULT_MODEL_DIR, seed: 1 })
}

const prompt = process.env.PLEXUS_PROMPT ?? 'Plexus pools the machines you own into one model'
process.stdout.write(`\nPrompt: ${prompt}\nOutput: `)
const child = spawn(process.execPath, [join(ROOT, 'packages/client/bin/plexus-client.js'), 'generate', '--local',
  '--model', DEFAULT_MODEL_DIR, '--prompt', prompt, '--max-tokens', '48', '--ignore-eos'], { stdio: 'inherit' })
child.on('exit', (code) => { process.exitCode = code ?? 1 })
