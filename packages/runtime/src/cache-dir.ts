// Where Plexus keeps what it computed or fetched once: one root ($PLEXUS_CACHE_DIR, else
// ~/.cache/plexus) with a folder or file per kind, so the variable means one thing everywhere.
import { homedir } from 'node:os'
import { join } from 'node:path'

/** The cache root, or `parts` under it: `cacheDir('models')` is where fetched client parts go. */
export function cacheDir (...parts: string[]): string {
  const root = process.env.PLEXUS_CACHE_DIR != null && process.env.PLEXUS_CACHE_DIR !== ''
    ? process.env.PLEXUS_CACHE_DIR
    : join(homedir(), '.cache', 'plexus')
  return join(root, ...parts)
}
