import { startSwarm } from './lib/local-swarm.ts'
const t0 = Date.now()
const s = await startSwarm(process.argv[2], ['0:4','4:8','8:12','4:8'])
console.log('swarm up in', Date.now() - t0, 'ms')
await s.stop()
