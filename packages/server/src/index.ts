// The server's public surface: a node that serves blocks, a verifier node, and the pieces the
// swarm suites drive directly (a backend behind a session handler, placement's arithmetic).
export { PlexusServer } from './server.ts'
export type { PlexusServerComponents, PlexusServerInit } from './server.ts'
export { VerifierNode } from './verifier-node.ts'
export { Verifier } from './verifier.ts'
export { createVerifyHandler } from './verify-handler.ts'
export { VerifierPeerLimits, DEFAULT_MAX_CHECKS_PER_PEER, DEFAULT_MAX_RECHECKS_PER_PEER } from './verifier-peer-limits.ts'
export { BlockBackend, BackendSet, applyFaults } from './backend.ts'
export type { FaultInjection, SessionBudgets } from './backend.ts'
export { createSessionHandler } from './session-handler.ts'
export { serveModelFiles, MODEL_FILES_PROTOCOL } from './model-files-handler.ts'
export { bytesPerBlock, blockBytesOf, blocksThatFit, capThroughputs, chooseStart, planMove, blockThroughputs } from './block-selection.ts'
export { cachedThroughput, describeThroughput, THROUGHPUT_MAX_AGE_MS } from './throughput.ts'
