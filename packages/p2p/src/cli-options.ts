// Option groups of the command-line tools: constant objects of yargs option definitions that a
// command registers with `.options(group)`, and `FlagValues`, the parsed flags' type derived
// from the same objects, so that a command's arguments cannot drift from its flags.
import { QUANT_FORMATS, isQuantFormat } from '@plexus/runtime'
import type { QuantFormat } from '@plexus/runtime'
import { LOG_LEVELS, LOG_FORMATS } from './log.ts'

/** A yargs option definition as these tools write one (structurally yargs' `Options`). */
export interface FlagSpec {
  type?: 'string' | 'number' | 'boolean' | 'array'
  /** With `type: 'array'`: the items are strings. */
  string?: boolean
  choices?: readonly unknown[]
  default?: unknown
  demandOption?: boolean | string
  hidden?: boolean
  describe: string
}

type FlagValue<F> = F extends { choices: ReadonlyArray<infer C> } ? C
  : F extends { type: 'array' } ? string[]
    : F extends { type: 'number' } ? number
      : F extends { type: 'boolean' } ? boolean
        : string

/** The flags of `G` that always have a value: a default, or demanded. */
type Given<G> = { [K in keyof G]: G[K] extends { default: unknown } | { demandOption: true | string } ? K : never }[keyof G]

type CamelCase<S extends string> = S extends `${infer H}-${infer T}` ? `${H}${Capitalize<CamelCase<T>>}` : S

/** What yargs parses from option groups, camelCase as commands read it; a flag without a default may be absent. */
export type FlagValues<G> =
  { [K in Given<G> & string as CamelCase<K>]: FlagValue<G[K]> } &
  { [K in Exclude<keyof G, Given<G>> & string as CamelCase<K>]?: FlagValue<G[K]> }

/** --log-level and --log-format: every command of every tool. */
export const loggingFlags = {
  'log-level': { choices: LOG_LEVELS, default: 'info', describe: 'Least severe messages written to stderr (debug also turns on libp2p\'s plexus:* debug logs)' },
  'log-format': { choices: LOG_FORMATS, default: 'text', describe: 'Messages and progress on stderr as text lines or one JSON object per line' }
} as const satisfies Record<string, FlagSpec>

/** How a node reaches others by name or through NAT: the DNS server for bootstrap names, STUN servers for WebRTC. */
export const dialFlags = {
  'dns-resolver': { type: 'string', describe: 'DNS server (IP or IP:PORT) for /dnsaddr, /dns4 and /dns6 bootstrap addresses instead of the system\'s' },
  stun: { type: 'array', string: true, describe: 'STUN server for WebRTC, stun:HOST:PORT (repeatable; default: none)' }
} as const satisfies Record<string, FlagSpec>

/** The network flags of plexus-node's commands (networkOptions turns them into node options). */
export const nodeNetworkFlags = {
  listen: { type: 'array', string: true, describe: 'Multiaddrs to listen on (default: every interface, IPv4 and IPv6, TCP and QUIC (UDP) port 31337, or a free port when that one is taken; no QUIC with --swarm-key)' },
  announce: { type: 'array', string: true, describe: 'Addresses to advertise instead of the ones found (e.g. a forwarded port); loopback and link-local ones never reach other machines\' peers' },
  'swarm-key': { type: 'string', describe: 'Private swarm: the key file every member holds (plexus-node swarm-key --out FILE); peers without it cannot connect' },
  ...dialFlags,
  webrtc: { type: 'boolean', describe: 'Reachable through relays and WebRTC, for a node behind NAT (default: when none of its addresses is public)' },
  relay: { type: 'boolean', describe: 'Relay connections for peers behind NAT (default: on for bootstrap peers)' },
  upnp: { type: 'boolean', describe: 'Ask the home router (UPnP) to forward the listen ports and announce its public address; --no-upnp: never (default: on for servers listening on a private address)' }
} as const satisfies Record<string, FlagSpec>

/** --quantize's problem (the tools' usage error), if its value is no format. */
export function quantizeProblem (quantize: string | undefined): string | undefined {
  return quantize == null || isQuantFormat(quantize) ? undefined : `--quantize ${quantize}: expected one of ${QUANT_FORMATS.join(', ')}`
}

/** --quantize as its format; the command's check has refused anything else already. */
export function quantizeFormat (quantize: string | undefined): QuantFormat | undefined {
  if (quantize == null) return undefined
  if (!isQuantFormat(quantize)) throw new RangeError(quantizeProblem(quantize))
  return quantize
}
