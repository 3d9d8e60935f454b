// A node's dashboard (`--dashboard-port`): the swarm as this node sees it, its tokens/s and the
// sessions that went through it lately.
import { createDashboard, listenDashboard } from '@plexus/p2p'
import type { PlexusNode, RouteView } from '@plexus/p2p'
import { PLEXUS_VERSION } from '@plexus/runtime'
import type { SwarmMember } from './swarm-member.ts'

/** Sessions remembered after they close. */
const KEEP_SESSIONS = 20

export interface NodeDashboardInit {
  node: PlexusNode
  port: number
  host: string
  /** A serving node's span and model (a bootstrap peer has none; its counters are the node's metrics). */
  member?: () => SwarmMember | undefined
  modelName?: string
}

export async function startNodeDashboard (init: NodeDashboardInit): Promise<{ url: string, port: number, close: () => Promise<void> }> {
  const { node } = init
  // the node's sessions and counters, read at each look (node-services.ts)
  const services = node.services.plexus
  const self = node.peerId.toString()
  // every session seen open, by id: the route a node knows is its own hop
  const seen = new Map<string, RouteView>()
  const sessions = (): Array<{ id: string, start: number, end: number }> => services.sessions?.all().flatMap(b => b.openSessions()) ?? []
  const dashboard = createDashboard({
    role: 'node',
    version: PLEXUS_VERSION,
    node,
    own: async () => await init.member?.()?.announcements() ?? [],
    counters: () => {
      const open = sessions()
      const ids = new Set(open.map(s => s.id))
      for (const r of seen.values()) r.open = false
      for (const s of open) {
        const r = seen.get(s.id)
        if (r != null) r.open = true
        else seen.set(s.id, { at: Date.now(), model: init.modelName ?? '', hops: [{ peer: self, start: s.start, end: s.end }], open: true })
      }
      for (const [id, r] of seen) {
        if (seen.size <= KEEP_SESSIONS) break
        if (!ids.has(id) || !r.open) seen.delete(id)
      }
      const span = init.member?.()?.serving
      return {
        tokensTotal: services.metrics?.tokensTotal ?? 0,
        sessions: open.length,
        serving: span != null ? { model: init.modelName ?? '', start: span.start, end: span.end } : undefined
      }
    },
    routes: () => [...seen.values()].reverse()
  })
  return await listenDashboard(dashboard, init.port, init.host)
}
