// One budget of buffered bytes per node, shared by every channel it serves (channel.ts): a
// frame's declared length is reserved before its body is buffered and released once it has
// been handled, so many streams each sending a large frame slowly cannot add up past it.

/** Default node-wide budget: 256 MiB. */
export const DEFAULT_MAX_BUFFERED_BYTES = 256 << 20
/** Default share of it one remote peer may hold: a quarter, so one peer cannot starve the rest. */
export const DEFAULT_PEER_BUFFER_SHARE = 0.25

export interface ByteBudgetInit {
  /** Bytes all channels together may hold. Default DEFAULT_MAX_BUFFERED_BYTES. */
  maxBytes?: number
  /**
   * Share of `maxBytes` (0–1) one remote peer's channels may hold together. Default 1/4. A peer
   * holding nothing may always have one frame (up to the node's budget): a model's largest step
   * may be bigger than the share, and an honest peer sends one at a time.
   */
  peerShare?: number
}

/** What a reservation refusal says: which limit it hit, for the `busy` reply. */
export interface BudgetRefusal { scope: 'node' | 'peer', message: string }

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(n % (1 << 20) === 0 ? 0 : 1)} MiB`

export class ByteBudget {
  readonly maxBytes: number
  readonly maxPeerBytes: number
  private usedBytes = 0
  private high = 0
  private readonly peers = new Map<string, number>()

  constructor (init: ByteBudgetInit = {}) {
    this.maxBytes = init.maxBytes ?? DEFAULT_MAX_BUFFERED_BYTES
    const share = init.peerShare ?? DEFAULT_PEER_BUFFER_SHARE
    if (!(this.maxBytes > 0) || !(share > 0 && share <= 1)) throw new RangeError(`buffered-bytes budget ${this.maxBytes}, peer share ${share}: expected bytes > 0 and a share in (0, 1]`)
    this.maxPeerBytes = Math.floor(this.maxBytes * share)
  }

  /** Bytes reserved now, and the most ever reserved at once. */
  get used (): number { return this.usedBytes }
  get highWater (): number { return this.high }
  peerUsed (peer: string): number { return this.peers.get(peer) ?? 0 }

  /**
   * Reserves `n` bytes for `peer`: returns the function that gives them back (once), or the
   * refusal naming the limit it would break (nothing is reserved then).
   */
  reserve (peer: string, n: number): (() => void) | BudgetRefusal {
    const mine = this.peerUsed(peer)
    if (mine > 0 && mine + n > this.maxPeerBytes) {
      return { scope: 'peer', message: `busy: a frame of ${n} bytes is over this peer's share of the node's buffered-bytes budget (${mib(this.maxPeerBytes)}, ${mine} bytes held)` }
    }
    if (this.usedBytes + n > this.maxBytes) {
      return { scope: 'node', message: `busy: a frame of ${n} bytes is over the node's buffered-bytes budget (${mib(this.maxBytes)}, ${this.usedBytes} bytes held)` }
    }
    this.usedBytes += n
    this.high = Math.max(this.high, this.usedBytes)
    this.peers.set(peer, mine + n)
    let done = false
    return () => {
      if (done) return
      done = true
      this.usedBytes -= n
      const left = this.peerUsed(peer) - n
      if (left > 0) this.peers.set(peer, left); else this.peers.delete(peer)
    }
  }
}
