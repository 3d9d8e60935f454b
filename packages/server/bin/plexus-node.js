#!/usr/bin/env node
import { launch } from '@plexus/runtime/launch'
await launch(new URL('../src/cli.ts', import.meta.url).pathname)
