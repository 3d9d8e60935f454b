// Private swarms: a pre-shared key (libp2p's pnet format, XSalsa20 over every connection) that
// every member holds. Peers without it cannot connect; its digest also names the swarm's DHT.
import { createHash } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { generateKey, preSharedKey } from '@libp2p/pnet'
import type { ConnectionProtector, MessageStream } from '@libp2p/interface'
import { PlexusError } from '@plexus/runtime'

const KEY_FILE_BYTES = 95 // "/key/swarm/psk/1.0.0/\n/base16/\n" + 64 hex digits
/** Every libp2p connection starts with multistream-select's header, so a peer that holds the
 *  same key decrypts these bytes first; anything else means another key (or none). */
const FIRST_BYTES = new Uint8Array([0x13, ...new TextEncoder().encode('/multistream/1.0.0\n')])

/** A swarm key file that cannot be used; `code` says why. */
export class SwarmKeyError extends PlexusError {
  constructor (message: string, code: string) { super(code, message, { httpStatus: 400 }); this.name = 'SwarmKeyError' }
}

/** A connection refused because the two sides hold different swarm keys (or one holds none). */
export class SwarmKeyMismatchError extends PlexusError {
  constructor (message: string) { super('ERR_SWARM_KEY_MISMATCH', message, { httpStatus: 503 }); this.name = 'SwarmKeyMismatchError' }
}

export interface SwarmKey {
  /** The key file's bytes, as libp2p's pnet reads them. */
  bytes: Uint8Array
  /** A short public name of the swarm (a digest of the key; it reveals nothing of the key). */
  id: string
}

/** A new key file's contents (pnet's v1 format). */
export function newSwarmKey (): Uint8Array {
  const bytes = new Uint8Array(KEY_FILE_BYTES)
  generateKey(bytes)
  return bytes
}

/** Writes a new swarm key to `path` (mode 0600); refuses to overwrite one. */
export async function writeSwarmKey (path: string): Promise<SwarmKey> {
  const bytes = newSwarmKey()
  try {
    await writeFile(path, bytes, { mode: 0o600, flag: 'wx' })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new SwarmKeyError(`cannot write swarm key ${path}: the file exists (a swarm's members share one key; remove it to make a new swarm)`, 'ERR_SWARM_KEY_EXISTS')
    throw new SwarmKeyError(`cannot write swarm key ${path}: ${code ?? (err as Error).message}`, 'ERR_SWARM_KEY_WRITE')
  }
  return parseSwarmKey(bytes, path)
}

/** Reads and checks a swarm key file. */
export async function readSwarmKey (path: string): Promise<SwarmKey> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new SwarmKeyError(`cannot read swarm key ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 'ERR_SWARM_KEY_READ')
  }
  return parseSwarmKey(bytes, path)
}

/** Checks a key file's contents: `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits. */
export function parseSwarmKey (bytes: Uint8Array, name = 'swarm key'): SwarmKey {
  const lines = new TextDecoder().decode(bytes).split(/\r?\n/)
  if (lines[0] !== '/key/swarm/psk/1.0.0/' || lines[1] !== '/base16/' || !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '') || lines.slice(3).some(l => l.trim() !== '')) {
    throw new SwarmKeyError(`${name} is not a swarm key (expected "/key/swarm/psk/1.0.0/", "/base16/" and 64 hex digits; make one with plexus-node swarm-key --out FILE)`, 'ERR_SWARM_KEY_FORMAT')
  }
  const psk = Buffer.from(lines[2], 'hex')
  const id = createHash('sha256').update('plexus swarm ').update(psk).digest('hex').slice(0, 16)
  // pnet's parser wants exactly the three lines
  return { bytes: new TextEncoder().encode(`${lines[0]}\n${lines[1]}\n${lines[2].toLowerCase()}`), id }
}

export interface SwarmKeyMismatch {
  /** The other side's address. */
  remoteAddr: string
  direction: 'inbound' | 'outbound'
}

type Bytes = Uint8Array | { subarray: () => Uint8Array }
type Box = MessageStream & { onData?: (data: Bytes) => void, readBuffer?: { byteLength: number, subarray: () => Uint8Array }, remoteAddr?: { toString: () => string }, direction?: 'inbound' | 'outbound' }

/**
 * libp2p's pre-shared-key protector, plus a check of the first bytes each side decrypts: with
 * another key (or none) they are not multistream-select's header, and the connection is
 * aborted at once with a SwarmKeyMismatchError, reported through `onMismatch`, instead of a
 * handshake that hangs until its timeout.
 */
export function swarmKeyProtector (key: SwarmKey, onMismatch?: (m: SwarmKeyMismatch) => void): () => ConnectionProtector {
  const inner = preSharedKey({ psk: key.bytes, timeout: 5000 })
  return () => {
    const protector = inner()
    return {
      [Symbol.toStringTag]: '@plexus/swarm-key',
      async protect (connection: MessageStream, options) {
        const box = await protector.protect(connection, options) as Box
        const onData = box.onData?.bind(box)
        if (onData == null) return box // another pnet version: no early check, the handshake still fails
        let seen = 0
        let refused = false
        // false once the decrypted bytes stop matching the header
        const matches = (bytes: Uint8Array): boolean => {
          for (let i = 0; seen < FIRST_BYTES.length && i < bytes.length; i++, seen++) if (bytes[i] !== FIRST_BYTES[seen]) return false
          return true
        }
        const refuse = (): void => {
          refused = true
          const remoteAddr = String(box.remoteAddr ?? '(unknown address)')
          onMismatch?.({ remoteAddr, direction: box.direction ?? 'inbound' })
          box.abort(new SwarmKeyMismatchError(`swarm key mismatch with ${remoteAddr}: the peer holds another swarm key, or none`))
        }
        // bytes decrypted before we got the stream wait in its read buffer (nobody reads it yet)
        if (box.readBuffer != null && box.readBuffer.byteLength > 0 && !matches(box.readBuffer.subarray())) refuse()
        box.onData = (data: Bytes): void => {
          if (refused) return
          if (seen < FIRST_BYTES.length && !matches(data instanceof Uint8Array ? data : data.subarray())) { refuse(); return }
          onData(data)
        }
        return box
      }
    }
  }
}
