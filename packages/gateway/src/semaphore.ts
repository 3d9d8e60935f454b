// Bounds concurrent generations; waiters leave the queue when their request is aborted.

export class Semaphore {
  readonly #max: number
  #used = 0
  readonly #waiters: Array<() => void> = []

  constructor (max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`max concurrent must be a positive integer (got ${max})`)
    this.#max = max
  }

  get inUse (): number { return this.#used }
  get waiting (): number { return this.#waiters.length }

  /** Resolves with a release function once a slot is free; rejects if `signal` aborts first. */
  async acquire (signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted()
    if (this.#used < this.#max) { this.#used++; return this.#releaser() }
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => { signal?.removeEventListener('abort', onAbort); resolve() }
      const onAbort = (): void => {
        const i = this.#waiters.indexOf(wake)
        if (i >= 0) this.#waiters.splice(i, 1)
        reject(signal!.reason)
      }
      this.#waiters.push(wake)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
    return this.#releaser()
  }

  #releaser (): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      const next = this.#waiters.shift()
      // Hand the slot straight to the next waiter (the count stays the same).
      if (next != null) next()
      else this.#used--
    }
  }
}
