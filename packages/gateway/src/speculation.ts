// Speculative decoding for a gateway's requests (serve/mcp --speculate): each request drafts,
// save those speculation cannot serve, which decode plainly (same output, only slower).
import { PromptLookupDrafter, SpeculativeError } from '@plexus/runtime'
import type { DraftModel, Drafter } from '@plexus/runtime'

export interface GatewaySpeculation {
  /** Most draft tokens per round (1..MAX_SPECULATE); the runtime adapts it to the acceptance rate. */
  k: number
  /**
   * Drafts with this model, loaded once and shared by every served model of its vocabulary (each
   * request opens a session of its own); absent: prompt lookup, which needs no model.
   */
  draftModel?: DraftModel
}

/** A drafter for one request, or why it decodes plainly instead. */
export type DraftPlan = { drafter: Drafter } | { plain: string }

export async function planDrafts (spec: GatewaySpeculation, req: { maxLength: number, vocabSize: number, trust: 'fast' | 'verified' }): Promise<DraftPlan> {
  // spot checks cannot follow a rollback past rejected drafts (speculative.ts refuses them too)
  if (req.trust === 'verified') return { plain: 'verified trust' }
  if (spec.draftModel == null) return { drafter: new PromptLookupDrafter() }
  try {
    return { drafter: await spec.draftModel.drafter(req.maxLength, req.vocabSize) }
  } catch (err) {
    // a draft model of another vocabulary cannot draft for this model: its requests go plain
    if (err instanceof SpeculativeError) return { plain: err.message }
    throw err
  }
}
