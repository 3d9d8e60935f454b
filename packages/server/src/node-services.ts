// What @plexus/server keeps on a node: its part of the node's services (`node.services.plexus`,
// declared in p2p's services.ts), added by declaration merging so p2p never imports the server.
import type { BackendSet } from './backend.ts'
import type { NodeMetrics } from './metrics.ts'
import type { ModelFilesState } from './model-files-handler.ts'

declare module '@plexus/p2p' {
  interface NodeServices {
    /**
     * The spans served in sessions, while the session protocol is handled: one handler per
     * node, shared by every span it serves (two while it moves). Filled by PlexusServer; read
     * by the metrics, the dashboard and status.
     */
    sessions?: BackendSet
    /** The models whose client parts the node serves, while it serves any (serveModelFiles). */
    modelFiles?: ModelFilesState
    /** The node's counters and /metrics, set by whoever creates them (the CLI); servers count into them. */
    metrics?: NodeMetrics
  }
}
