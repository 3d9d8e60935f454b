// The models a gateway answers for: one it was given, or every model a swarm serves, each opened
// (its client parts fetched and loaded) on the first request that names it.
import type { GatewayModel } from './engine.ts'

/** A model as listings show it (/v1/models, /api/tags, MCP's list_models). */
export interface CatalogEntry {
  /** The name requests use. */
  name: string
  /** The model id (a digest over its weights), when known. */
  id?: string
  /** Every block has a server (always true for a local model). */
  complete: boolean
  numBlocks?: number
  /** Servers per block. */
  coverage?: number[]
  servers?: number
  /** Weight formats and compute backends the servers announce. */
  formats?: string[]
  backends?: string[]
  contextLength?: number
  /** Open in this gateway now (Ollama's /api/ps). */
  loaded: boolean
}

export interface OpenedModel {
  /** The model's name in responses (whatever name, alias or id the request used). */
  name: string
  model: GatewayModel
}

export interface ModelCatalog {
  /** What requests may name now. */
  list (): Promise<CatalogEntry[]>
  /**
   * The model `requested` names (its name, an alias, its id or an id prefix), opened on first use;
   * undefined when this catalog has no such model.
   */
  open (requested: string): Promise<OpenedModel | undefined>
  /** Names requests may use, for the error a wrong name gets. */
  names (): Promise<string[]>
  close? (): Promise<void>
}

/** A catalog of the one model a gateway was started with (`serve --local`, a model named on the command line). */
export function singleModel (model: GatewayModel, name: string, aliases: string[] = []): ModelCatalog {
  const accepted = new Set([name, ...aliases, ...(model.manifest != null ? [model.manifest.id] : [])])
  return {
    list: async () => [{
      name,
      id: model.manifest?.id,
      complete: true,
      numBlocks: model.config.numLayers,
      contextLength: model.config.maxPositions,
      loaded: true
    }],
    open: async (requested) => accepted.has(requested) ? { name, model } : undefined,
    names: async () => [name]
  }
}
