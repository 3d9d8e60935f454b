export * from './messages.ts'
export * from './commitment.ts'
export * from './verification.ts'
export * from './verify-messages.ts'
export * from './session-limits.ts'
// the channel and the protocol table live in @plexus/p2p (info runs on them too); named here as before
export {
  PROTOCOLS, SESSION_PROTOCOL, VERIFY_PROTOCOL, MODEL_FILES_PROTOCOL, INFO_PROTOCOL, MAX_ERROR_MESSAGE,
  Channel, ChannelError, errorReply, jsonErrorFrame, boundMessage, varintBytes, encodeVarint, MAX_VARINT_BYTES,
  serveChannel, openChannel, request
} from '@plexus/p2p'
export type {
  ChannelLimits, ProtocolSpec, ChannelErrorCode, ErrorReply, ChannelInit, ChannelCodec, ServeLimits, ServeInit, ChannelDialer
} from '@plexus/p2p'
