import { shortId } from '@plexus/runtime'
import { listModels } from '../routing/discovery.ts'
import { connectSwarm, stopNode } from '../model-source.ts'
import type { ModelsArgs } from '../cli-options.ts'

export type { ModelsArgs }

/** Coverage as compact ranges of equal server counts, e.g. "0–3×2 4–7×1 8–11×0". */
export function coverageText (coverage: number[]): string {
  const parts: string[] = []
  for (let b = 0; b < coverage.length;) {
    let e = b
    while (e + 1 < coverage.length && coverage[e + 1] === coverage[b]) e++
    parts.push(`${b === e ? b : `${b}–${e}`}×${coverage[b]}`)
    b = e + 1
  }
  return parts.join(' ')
}

export async function runModels (args: ModelsArgs): Promise<void> {
  // the CLI's middleware fills in the shipped list when none is given (or says there is none)
  const node = await connectSwarm(args.bootstrap ?? [])
  try {
    const models = await listModels(node)
    if (args.json) {
      process.stdout.write(JSON.stringify({ models }) + '\n')
      return
    }
    if (models.length === 0) {
      process.stdout.write('no models are served by the peers reachable through this bootstrap peer\n')
      return
    }
    for (const m of models) {
      const missing = m.coverage.filter(c => c === 0).length
      process.stdout.write(`${m.name}  ${shortId(m.modelId)}  ${m.numBlocks} blocks, ${m.servers} server(s)${missing > 0 ? `, ${missing} block(s) unserved` : ', complete'}${m.offersHead ? '' : ', no peer offers the client parts'}\n`)
      process.stdout.write(`  servers per block: ${coverageText(m.coverage)}\n`)
      if (m.formats.length > 0 || m.backends.length > 0) process.stdout.write(`  weights: ${m.formats.join(', ') || 'unknown'}; computed on: ${m.backends.join(', ') || 'unknown'}\n`)
      process.stdout.write(`  id: ${m.modelId}\n`)
    }
  } finally {
    await stopNode(node)
  }
}
