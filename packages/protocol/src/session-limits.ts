// Sizes of session frames. The channel they travel on and the table of every protocol's ids and
// limits (PROTOCOLS) live in @plexus/p2p, below this package, so that info runs on it too.

/** First byte of every session frame payload. */
export const WIRE_VERSION = 1
/** Session frame preamble: [u8 version][u8 0][u32 BE header length]. */
export const SESSION_PREAMBLE_BYTES = 6
/**
 * Room for a session frame's JSON header: a result's commitment (≤ 8 KiB by the schema), an
 * open's next-hop addresses (8 × 256 chars) or an error message (≤ 2,000 chars, escaped).
 */
export const MAX_SESSION_HEADER_BYTES = 32 << 10
/** Widest value a tensor crosses the wire in (f32); f16 and bf16 take 2. */
export const MAX_BYTES_PER_VALUE = 4

/** What a session frame must hold for a model: one step of `maxStepTokens` tokens of `hiddenSize` values. */
export interface SessionShape { hiddenSize: number, maxStepTokens: number }

/**
 * Largest session frame for a model: the biggest step (tokens × hidden × bytes per value) plus
 * preamble and header. Every other message is smaller.
 */
export function sessionFrameLimit (shape: SessionShape): number {
  return SESSION_PREAMBLE_BYTES + MAX_SESSION_HEADER_BYTES + shape.hiddenSize * shape.maxStepTokens * MAX_BYTES_PER_VALUE
}
