'use strict'
// `npm test`: every test file except the swarm suites (test/swarm-suites.cjs), which
// `npm run test:swarm` runs (.mocharc.swarm.cjs).
module.exports = {
  spec: ['test/**/*.test.ts'],
  ignore: require('./test/swarm-suites.cjs'),
  extension: ['ts'],
  reporter: './test/support/reporter.cjs',
  timeout: 120000,
  exit: true
}
