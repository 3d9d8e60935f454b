'use strict'
// `npm test`: each package's own tests (packages/*/test, mirroring src) and every file of test/
// except the swarm suites (test/swarm-suites.cjs), which `npm run test:swarm` runs
// (.mocharc.swarm.cjs).
module.exports = {
  spec: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
  ignore: require('./test/swarm-suites.cjs'),
  extension: ['ts'],
  reporter: './test/support/reporter.cjs',
  timeout: 120000,
  exit: true
}
