'use strict'
// The swarm suites: test files that start several processes (a swarm of plexus-node processes, a
// gateway process under load, network namespaces, a browser, an npm install). They take most of
// the suite's time, so `npm test` leaves them out and `npm run test:swarm` runs them; CI runs both.
// A new file of that kind adds its name here.
module.exports = [
  'test/swarm.test.ts',
  'test/failover.test.ts',
  'test/load.test.ts',
  'test/verification.test.ts',
  'test/model-fetch.test.ts',
  'test/placement.test.ts',
  'test/p2p-swarm.test.ts',
  'test/p2p-private-swarm.test.ts',
  'test/reachability.test.ts',
  'test/netns-delay.test.ts',
  'test/upnp.test.ts',
  'test/gateway.test.ts',
  'test/gateway-models.test.ts',
  'test/hardening-gateway.test.ts',
  'test/hardening-budgets.test.ts',
  'test/hardening-verifier.test.ts',
  'test/hardening-model-files.test.ts',
  'test/health.test.ts',
  'test/gguf-model.test.ts',
  'test/quantized-models.test.ts',
  'test/speculative.test.ts',
  'test/forwarding.test.ts',
  'test/dashboard.test.ts',
  'test/progress.test.ts',
  'test/packaging.test.ts',
  'test/fuzz.test.ts',
  // a swarm on the GPU backend; many plexus-client processes
  'test/webgpu-runtime.test.ts',
  'test/cli-and-sampling.test.ts'
]
