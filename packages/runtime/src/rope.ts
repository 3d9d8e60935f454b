import type { ModelConfig } from './config.ts'

/** Rotary inverse frequencies, with Hugging Face's llama3 scaling when configured. */
export function inverseFrequencies (cfg: ModelConfig): Float64Array {
  const d = cfg.headDim
  const inv = new Float64Array(d / 2)
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / d)
  const s = cfg.ropeScaling
  if (s == null) return inv
  const lowWavelen = s.originalMaxPositions / s.lowFreqFactor
  const highWavelen = s.originalMaxPositions / s.highFreqFactor
  for (let i = 0; i < inv.length; i++) {
    const wavelen = (2 * Math.PI) / inv[i]
    if (wavelen > lowWavelen) {
      inv[i] = inv[i] / s.factor
    } else if (wavelen >= highWavelen) {
      // Medium frequencies: interpolate between scaled and unscaled.
      const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
      inv[i] = (1 - smooth) * inv[i] / s.factor + smooth * inv[i]
    }
  }
  return inv
}

/**
 * cos and signed sin tables `[positions, headDim]` for rotate-half rotary embeddings:
 * out = x·cos + swapHalves(x)·sinSigned, where sinSigned = [-sin, sin] (HF's `rotate_half`).
 */
export function rotaryTables (inv: Float64Array, positions: ArrayLike<number>): { cos: Float32Array, sin: Float32Array } {
  const half = inv.length
  const d = half * 2
  const cos = new Float32Array(positions.length * d)
  const sin = new Float32Array(positions.length * d)
  for (let t = 0; t < positions.length; t++) {
    const p = positions[t]
    for (let i = 0; i < half; i++) {
      const a = p * inv[i]
      const c = Math.cos(a)
      const s = Math.sin(a)
      cos[t * d + i] = c
      cos[t * d + half + i] = c
      sin[t * d + i] = -s
      sin[t * d + half + i] = s
    }
  }
  return { cos, sin }
}
