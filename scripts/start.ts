// `npm start`: the demo. A swarm on 127.0.0.1 in separate processes — a bootstrap peer and three
// nodes each serving a third of the default model's blocks — then a client generating through it,
// checked against a single-process run of the same model.
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { initBackend, generate, StreamDecoder, shortId } from '@plexus/runtime'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import { makeModel } from './lib/model-maker.ts'
import { startSwarm, ROOT } from './lib/local-swarm.ts'

export const DEFAULT_MODEL_DIR = join(ROOT, '.plexus', 'models', 'default-small')
const MAX_TOKENS = Number(process.env.PLEXUS_MAX_TOKENS ?? 48)
const prompt = process.env.PLEXUS_PROMPT ?? 'Plexus pools the machines you own into one model'
const say = (s: string): void => { process.stdout.write(s + '\n') }

async function exists (p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}

if (!(await exists(join(DEFAULT_MODEL_DIR, 'plexus-manifest.json')))) {
  say(`Making the default model in ${DEFAULT_MODEL_DIR} (small shape: 12 blocks, hidden 768, random weights)…`)
  await makeModel({ shape: 'small', dtype: 'bf16', out: DEFAULT_MODEL_DIR, seed: 1, name: 'plexus-demo-small' })
}

say('Starting a local swarm: 1 bootstrap peer + 3 nodes (blocks 0–3, 4–7, 8–11), each its own process…')
const swarm = await startSwarm(DEFAULT_MODEL_DIR, ['0:4', '4:8', '8:12'])
let exitCode = 0
try {
  say(`  bootstrap  ${swarm.bootstrapAddr}`)
  for (const n of [...swarm.nodes].sort((a, b) => a.ready.start - b.ready.start)) say(`  node       blocks ${n.ready.start}–${n.ready.end - 1}  ${n.ready.throughput.toFixed(0)} tok/s/block  ${n.addrs[0]}`)

  await initBackend()
  const node = await connectSwarm([swarm.bootstrapAddr])
  const model = await openSwarm(node, { dir: DEFAULT_MODEL_DIR })
  const ids = model.tokenizer!.encode(prompt, { addSpecialTokens: true })
  const session = await model.session(ids.length + MAX_TOKENS)
  say(`\nModel ${model.manifest!.name} (${shortId(model.manifest!.id)}); route: ${session.route!.map(h => `${h.peer.slice(-8)} [${h.start},${h.end})`).join(' → ')}`)
  say(`Prompt: ${prompt}`)
  process.stdout.write('Output: ')
  const decoder = new StreamDecoder(model.tokenizer!)
  const viaSwarm = await generate(model.head, session, ids, { maxTokens: MAX_TOKENS, onToken: (id) => { process.stdout.write(decoder.push(id)) } })
  process.stdout.write(decoder.flush() + '\n\n')
  await session.close()
  await model.close()
  await node.stop()

  const local = await openLocal(DEFAULT_MODEL_DIR)
  const single = await generate(local.head, await local.session(ids.length + MAX_TOKENS), ids, { maxTokens: MAX_TOKENS })
  await local.close()

  const same = JSON.stringify(single.tokenIds) === JSON.stringify(viaSwarm.tokenIds)
  say(`swarm:          ${viaSwarm.tokenIds.length} tokens, decode ${viaSwarm.tokensPerSecond.toFixed(1)} tok/s, prefill ${viaSwarm.prefillTokensPerSecond.toFixed(1)} tok/s`)
  say(`single process: ${single.tokenIds.length} tokens, decode ${single.tokensPerSecond.toFixed(1)} tok/s`)
  say(`output identical to the single-process run: ${same ? 'yes' : 'NO'}`)
  if (!same) exitCode = 1
} catch (err: any) {
  process.stderr.write(`npm start: ${err.message}\n`)
  exitCode = 1
} finally {
  await swarm.stop()
}
process.exit(exitCode)
