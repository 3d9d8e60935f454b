// serve/mcp --speculate: what the gateway drafts with. A draft model is loaded once, at start (a
// bad path fails there, not on the first request), and shared by the models served.
import { DraftModel } from '@plexus/runtime'
import type { GatewaySpeculation } from '@plexus/gateway'
import type { ServingArgs } from './cli-options.ts'

export interface ServingSpeculation {
  /** Absent without --speculate. */
  speculate?: GatewaySpeculation
  close (): Promise<void>
}

export async function openSpeculation (args: Pick<ServingArgs, 'speculate' | 'draftModel' | 'draftBlocks'>): Promise<ServingSpeculation> {
  if (args.speculate == null) return { close: async () => {} }
  const draftModel = args.draftModel != null ? await DraftModel.load(args.draftModel, { blocks: args.draftBlocks }) : undefined
  return { speculate: { k: args.speculate, draftModel }, close: async () => { await draftModel?.dispose() } }
}
