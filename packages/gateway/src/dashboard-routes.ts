// The swarm dashboard at / on the gateway. The page, its assets and its event stream come from
// @plexus/p2p's dashboard handler (plain node:http), handed in by whoever runs the gateway: the
// gateway itself knows no swarm. Read-only, so like /metrics and /health it needs no API key.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'

export interface DashboardHandler {
  /** The paths it answers (GET and HEAD). */
  paths: readonly string[]
  handle (req: IncomingMessage, res: ServerResponse): boolean
  /** Ends its event streams (before the server closes, which would wait for them). */
  close (): void
}

export function registerDashboard (app: FastifyInstance, dashboard: DashboardHandler): void {
  for (const url of dashboard.paths) {
    app.get(url, (request, reply) => {
      void reply.hijack()
      dashboard.handle(request.raw, reply.raw)
    })
  }
}

/** Whether `url` is one of the dashboard's paths (exempt from the API key). */
export function isDashboardUrl (dashboard: DashboardHandler | undefined, url: string): boolean {
  return dashboard != null && dashboard.paths.includes(url.split('?')[0])
}
