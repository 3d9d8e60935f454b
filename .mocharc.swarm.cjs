'use strict'
// `npm run test:swarm`: the multi-process suites listed in test/swarm-suites.cjs.
const { existsSync } = require('node:fs')
module.exports = {
  ...require('./.mocharc.cjs'),
  // a listed file not written yet is left out rather than failing the run
  spec: require('./test/swarm-suites.cjs').filter(f => existsSync(f)),
  ignore: []
}
