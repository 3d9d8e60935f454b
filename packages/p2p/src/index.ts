export { loadOrCreateKey, KeyFileError } from './keys.ts'
export { createPlexusNode, dhtPeerCount, dhtProtocol, setProcessNetwork, PROTOCOL_PREFIX, DHT_PROTOCOL, DEFAULT_PROVIDER_VALIDITY_MS, INBOUND_CONNECTIONS_PER_HOST } from './node.ts'
export type { PlexusNode, PlexusNodeInit, PlexusServices, ProcessNetwork } from './node.ts'
export { nodeServices } from './services.ts'
export type { NodeServices, NodeServicesInit, NodeNetwork } from './services.ts'
export { dialBootstrap, keepBootstrapped, parseBootstrapAddr, describeDialError, defaultBootstrapPeers, bootstrapOrDefault, BOOTSTRAP_PEERS_FILE, DEFAULT_BOOTSTRAP_TIMEOUT_MS } from './bootstrap.ts'
export type { BootstrapAddr, BootstrapResult, DialBootstrapOptions, BootstrapKeeperOptions } from './bootstrap.ts'
export {
  signRecord, verifyRecord, RecordError, RECORD_SIGNING_PREFIX, DEFAULT_RECORD_TTL_MS, DEFAULT_MAX_RECORD_BYTES,
  DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_TTL_MS
} from './records.ts'
export type { RecordPayload, RecordFault, SignRecordOptions, VerifyRecordOptions } from './records.ts'
export { validate, schemaProblem, getValidator, SCHEMA_DIR } from './schemas.ts'
export { withConfig, ConfigFileError, ENV_FLAGS } from './cli-config.ts'
export type { CliConfigSpec } from './cli-config.ts'
export { signAnnouncement, verifyAnnouncement, ANNOUNCEMENT_KIND, ANNOUNCEMENT_SCHEMA } from './announcement.ts'
export type { AnnouncementBody, AnnouncementPayload } from './announcement.ts'
export {
  signReputation, verifyReputation, reputationKey, parseReputationKey, reputationValidator, reputationSelector, putReputation, ReputationValidator,
  getReputation, REPUTATION_KIND, REPUTATION_SCHEMA, REPUTATION_NAMESPACE, DEFAULT_REPUTATION_TTL_MS,
  DEFAULT_REPUTATION_PUT_TIMEOUT_MS, DEFAULT_REPUTATION_GET_TIMEOUT_MS
} from './reputation.ts'
export type {
  ReputationBody, ReputationRecord, VerifyReputationOptions, PutReputationOptions, GetReputationOptions
} from './reputation.ts'
export { Announcer, blockCid, modelsCid, findBlockHolders, findServers, waitForDhtPeers } from './announce.ts'
export type { AnnouncerComponents, AnnouncerInit, AnnounceRound, FindOptions } from './announce.ts'
export { serveInfo, fetchInfo, MAX_INFO_RECORDS, InfoError } from './info.ts'
export type { InfoSource, ServeInfoOptions, FetchInfoOptions } from './info.ts'
export {
  PROTOCOLS, SESSION_PROTOCOL, VERIFY_PROTOCOL, MODEL_FILES_PROTOCOL, INFO_PROTOCOL, MAX_INFO_REQUEST_BYTES, MAX_INFO_RESPONSE_BYTES,
  DEFAULT_INFO_TIMEOUT_MS, MAX_ERROR_MESSAGE
} from './protocols.ts'
export type { ChannelLimits, ProtocolSpec } from './protocols.ts'
export { Channel, ChannelError, errorReply, jsonErrorFrame, boundMessage, varintBytes, encodeVarint, MAX_VARINT_BYTES } from './channel.ts'
export type { ChannelErrorCode, ErrorReply, ChannelInit } from './channel.ts'
export { serveChannel, openChannel, request } from './channel-serve.ts'
export { ByteBudget, DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_PEER_BUFFER_SHARE } from './byte-budget.ts'
export type { ByteBudgetInit, BudgetRefusal } from './byte-budget.ts'
export type { ChannelCodec, ServeLimits, ServeInit, ChannelDialer } from './channel-serve.ts'
export type { PeerId, PrivateKey } from '@libp2p/interface'
export * from './discovery.ts'
export * from './dashboard/index.ts'
export { DEFAULT_PORT, allInterfaces, defaultListen, withQuic, announceable, onlyLoopback } from './addresses.ts'
export { newSwarmKey, writeSwarmKey, readSwarmKey, parseSwarmKey, swarmKeyProtector, SwarmKeyError, SwarmKeyMismatchError } from './swarm-key.ts'
export type { SwarmKey, SwarmKeyMismatch } from './swarm-key.ts'
export { createResolver, resolveAddr, dnsaddrRecords, checkDnsServer, isDnsAddr, DnsAddrError } from './dnsaddr.ts'
export type { DnsResolverOptions } from './dnsaddr.ts'
export { createLog, componentLog, configureLogging, configureLoggingFromArgv, logSettings, setLogWriter, isLogLevel, isLogFormat, LOG_LEVELS, LOG_FORMATS } from './log.ts'
export type { Log, ComponentLog, LogLevel, LogFormat, LogSettings } from './log.ts'
export { progressReporter, progressStyle, progressLine, progressLabel } from './progress.ts'
export type { ProgressReport, ProgressStyle, ProgressReporterOptions } from './progress.ts'
export { reachability, settledReachability, portMapped, isPublicHost, RELAY_WAIT_MS, MAPPING_GRACE_MS } from './reachability.ts'
export { portMapping, PortMapping, GATEWAY_SEARCH_MS } from './port-mapping.ts'
export { PeerLiveness, PeerSilentError, peerLiveness, DEFAULT_LIVENESS_INTERVAL_MS, DEFAULT_LIVENESS_TIMEOUT_MS, DEFAULT_INBOUND_LIVENESS_TIMEOUT_MS } from './liveness.ts'
export type { PeerLivenessInit } from './liveness.ts'
export type { PortMappingState } from './port-mapping.ts'
export type { Reachability } from './reachability.ts'
export { networkOptions, reportMismatches, bootstrapRecords, runSwarmKey } from './cli-network.ts'
export type { NetworkArgs, NetworkOptions } from './cli-network.ts'
export { loggingFlags, dialFlags, nodeNetworkFlags, quantizeProblem, quantizeFormat } from './cli-options.ts'
export type { FlagSpec, FlagValues } from './cli-options.ts'
