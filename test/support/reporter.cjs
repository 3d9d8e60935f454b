'use strict'
// The spec reporter, plus one closing line `N passed, N failed, N skipped` that CI reads.
const Mocha = require('mocha')
const { EVENT_RUN_END } = Mocha.Runner.constants

class PlexusReporter extends Mocha.reporters.Spec {
  constructor (runner, options) {
    super(runner, options)
    runner.once(EVENT_RUN_END, () => {
      const s = runner.stats
      process.stdout.write(`\n${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`)
    })
  }
}
module.exports = PlexusReporter
