// What the frames say: session and verify messages, tensors on the wire, step commitments, fraud
// reports, session frame limits. The framing itself (the channel, the protocol table) is @plexus/p2p's.
export {
  encodeTensor, decodeTensor, encodeMessage, decodeMessage, sessionCodec, inspectStep, ProtocolError
} from './messages.ts'
export type {
  WireDType, ErrorCode, NextHop, OpenMessage, AttachMessage, StepMessage, TruncateMessage,
  CloseMessage, SessionMessage
} from './messages.ts'
export { tensorDigest, signCommitment, verifyCommitment } from './commitment.ts'
export type { StepCommitmentBody, StepCommitment } from './commitment.ts'
export {
  outputError, f32ToBase64, base64ToF32, signFraudReport, verifyFraudReport, reportDigest,
  DEFAULT_TOLERANCE
} from './verification.ts'
export type { FraudReport } from './verification.ts'
export { encodeVerifyMessage, decodeVerifyMessage, VerifyError, verifyCodec } from './verify-messages.ts'
export type {
  VerifyErrorCode, CheckMessage, VerdictMessage, RecheckMessage, RecheckedMessage, VerifyCloseMessage,
  GetReportMessage, ReportMessage, VerifyMessage
} from './verify-messages.ts'
export {
  sessionFrameLimit, WIRE_VERSION, SESSION_PREAMBLE_BYTES, MAX_SESSION_HEADER_BYTES
} from './session-limits.ts'
