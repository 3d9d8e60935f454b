'use strict'
// `npm run test:swarm`: the multi-process suites listed in test/swarm-suites.cjs.
module.exports = {
  ...require('./.mocharc.cjs'),
  spec: require('./test/swarm-suites.cjs'),
  ignore: []
}
