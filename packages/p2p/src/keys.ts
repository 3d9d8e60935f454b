import { randomBytes } from 'node:crypto'
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { Ed25519PrivateKey } from '@libp2p/interface'
import { PlexusError } from '@plexus/runtime'

/** A key file that cannot be read, written or used; the message names it. */
export class KeyFileError extends PlexusError {
  constructor (message: string) { super('key-file', message); this.name = 'KeyFileError' }
}

/**
 * The node's identity: an Ed25519 key kept on disk as libp2p protobuf bytes (mode 0600).
 * Ed25519 is required because peer ids then embed the public key, which is what lets anyone
 * verify a signed record from the peer id alone.
 */
export async function loadOrCreateKey (path: string): Promise<Ed25519PrivateKey> {
  const existing = await readKeyFile(path)
  if (existing != null) return existing

  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  // Write aside, then hard-link into place: link() fails if the file appeared meanwhile, so two
  // processes starting together never overwrite each other's key or read a half-written one.
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  try {
    await link(tmp, path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new KeyFileError(`cannot save key file ${path}: ${(err as Error).message}`)
    const theirs = await readKeyFile(path)
    if (theirs == null) throw new KeyFileError(`key file ${path} vanished while it was being created`)
    return theirs
  } finally {
    await unlink(tmp).catch(() => {})
  }
  return key
}

async function readKeyFile (path: string): Promise<Ed25519PrivateKey | undefined> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new KeyFileError(`cannot read key file ${path}: ${(err as Error).message}`)
  }
  let key
  try {
    key = privateKeyFromProtobuf(bytes)
  } catch (err) {
    throw new KeyFileError(`key file ${path} is corrupt (not a libp2p protobuf private key: ${(err as Error).message}); move it away to create a new identity`)
  }
  if (key.type !== 'Ed25519') throw new KeyFileError(`key file ${path} holds a ${key.type} key; Plexus needs Ed25519`)
  return key
}
