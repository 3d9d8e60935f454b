// A server that hangs mid-generation (SIGSTOP after a few tokens): the failover suites time how
// long the client took to route around it.
import { generate } from '@plexus/runtime'
import type { GenerateResult, ModelHead, SessionPipeline } from '@plexus/runtime'
import type { NodeProcess } from '../../scripts/lib/local-swarm.ts'

/**
 * Generates through `session`, stopping `victim` (SIGSTOP) once `atToken` tokens came; returns
 * the result and the longest wait between two tokens after that (the detection and the replay).
 * The victim stays stopped: the caller kills or continues it.
 */
export async function generateStoppingServer (head: ModelHead, session: SessionPipeline, prompt: number[], maxTokens: number, victim: NodeProcess, atToken = 4): Promise<{ result: GenerateResult, slowestMs: number }> {
  let n = 0
  let stopped = false
  let slowestMs = 0
  let last = performance.now()
  const result = await generate(head, session, prompt, {
    maxTokens,
    onToken: () => {
      const now = performance.now()
      if (stopped) slowestMs = Math.max(slowestMs, now - last)
      last = now
      if (++n === atToken) { victim.child.kill('SIGSTOP'); stopped = true }
    }
  })
  return { result, slowestMs }
}
