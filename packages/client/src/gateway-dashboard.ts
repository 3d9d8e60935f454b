// The gateway's dashboard (at /): the swarm as the gateway sees it, the tokens it generates and
// the routes its generations took.
import { createDashboard } from '@plexus/p2p'
import type { Dashboard } from '@plexus/p2p'
import type { GatewayMetrics } from '@plexus/gateway'
import { PLEXUS_VERSION } from '@plexus/runtime'
import type { GatewayCatalog } from './gateway-catalog.ts'

export interface GatewayDashboard {
  dashboard: Dashboard
  /** Reads tokens and sessions from these metrics (the gateway's, once it exists). */
  watch (metrics: GatewayMetrics): void
}

export function gatewayDashboard (models: GatewayCatalog): GatewayDashboard {
  let metrics: GatewayMetrics | undefined
  const dashboard = createDashboard({
    role: 'gateway',
    version: PLEXUS_VERSION,
    node: models.node,
    routes: () => models.routes?.list() ?? [],
    counters: async () => {
      if (metrics == null) return { tokensTotal: 0, sessions: 0 }
      const tokens = (await metrics.generatedTokens.get()).values.reduce((n, v) => n + v.value, 0)
      const sessions = (await metrics.openSessions.get()).values.reduce((n, v) => n + v.value, 0)
      return { tokensTotal: tokens, sessions }
    }
  })
  return { dashboard, watch: (m) => { metrics = m } }
}
