import type { Resolver } from 'node:dns/promises'
import { ByteBudget } from './byte-budget.ts'
import type { ByteBudgetInit } from './byte-budget.ts'
import type { InfoSource } from './info.ts'
import type { ReputationValidator } from './reputation.ts'
import type { SwarmKey } from './swarm-key.ts'

/** The network a node was created in. */
export interface NodeNetwork {
  /** The DNS resolver its bootstrap names (/dnsaddr, /dns4, /dns6) go through. */
  readonly resolver: Resolver
  /** The private swarm it belongs to, if any. */
  readonly swarmKey?: SwarmKey
}

/**
 * Everything a node owns beyond libp2p's own services, in one place: `node.services.plexus`,
 * created with the node by createPlexusNode. Whoever needs a node's state reads it here, never
 * from a table kept beside the node.
 *
 * Filled by p2p:
 * - `network`: the resolver and swarm key it was created with (createPlexusNode; read by bootstrap.ts);
 * - `reputation`: the validator its DHT runs on reputation records, told of the records the node
 *   stores itself (putReputation), which kad-dht does not validate;
 * - `infoSources`: what the info protocol answers with, while it is handled (serveInfo: one
 *   handler answers for every source, so two servers sharing a node both show up);
 * - `provided`: the CIDs it provides and for how many Announcers, so stopping one of two that
 *   share a CID (the models CID, overlapping spans) keeps the other's record;
 * - `budget`: the buffered-bytes budget every channel the node serves reserves its frames from.
 *
 * Packages above p2p add their own fields by declaration merging
 * (`declare module '@plexus/p2p' { interface NodeServices { … } }`), always optional, so p2p
 * never imports them: @plexus/server adds its sessions, model files and metrics
 * (server/src/node-services.ts).
 */
export interface NodeServices {
  readonly network: NodeNetwork
  readonly reputation: ReputationValidator
  infoSources?: Set<InfoSource>
  readonly provided: Map<string, number>
  readonly budget: ByteBudget
}

export interface NodeServicesInit {
  network: NodeNetwork
  reputation: ReputationValidator
  budget?: ByteBudgetInit
}

/** A libp2p service factory: `services: { plexus: nodeServices(init) }`. */
export function nodeServices (init: NodeServicesInit): () => NodeServices {
  return () => ({ network: init.network, reputation: init.reputation, provided: new Map(), budget: new ByteBudget(init.budget) })
}
