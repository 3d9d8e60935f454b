/** The release every Plexus package belongs to: announced by nodes, reported by servers and gateways. */
export const PLEXUS_VERSION = '0.1.0'
