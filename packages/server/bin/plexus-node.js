#!/usr/bin/env node
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { launch } from '@plexus/runtime/launch'
// A packed install (npm run pack) runs the compiled dist/; the repository runs the sources.
const built = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
await launch(existsSync(built) ? built : fileURLToPath(new URL('../src/cli.ts', import.meta.url)))
