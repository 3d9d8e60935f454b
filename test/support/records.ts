// Helpers for tests of signed records (records.ts and the kinds built on it).
import assert from 'node:assert/strict'
import { RecordError } from '@plexus/p2p'

const enc = new TextEncoder()
const dec = new TextDecoder()

/** Asserts `fn` throws a RecordError with this fault and a message matching `re`; returns the message. */
export function rejects (fn: () => unknown, fault: string, re: RegExp): string {
  try {
    fn()
  } catch (err) {
    assert.ok(err instanceof RecordError, `expected a RecordError, got ${String(err)}`)
    assert.equal(err.fault, fault, err.message)
    assert.match(err.message, re)
    return err.message
  }
  assert.fail(`expected a ${fault} rejection`)
}

/** The record with its signed payload text edited (the signature is kept, so no longer valid). */
export function tamper (bytes: Uint8Array, edit: (payload: string) => string): Uint8Array {
  const env = JSON.parse(dec.decode(bytes)) as { payload: string, sig: string }
  const payload = edit(env.payload)
  assert.notEqual(payload, env.payload, 'the edit changed nothing')
  return enc.encode(JSON.stringify({ payload, sig: env.sig }))
}
