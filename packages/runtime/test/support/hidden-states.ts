import { seededRandom } from '../../src/sampling.ts'

/** `rows` random hidden states of `width` values in [-1, 1), the same for the same seed. */
export function hiddenStates (rows: number, width: number, seed = 7): Float32Array {
  const rand = seededRandom(seed)
  return Float32Array.from({ length: rows * width }, () => rand() * 2 - 1)
}
