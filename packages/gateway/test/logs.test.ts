// A server-side failure behind the gateway (a 5xx) is logged through the plexus log with its
// stack; what the client did wrong (a 4xx) is not.
import assert from 'node:assert/strict'
import { createGateway } from '@plexus/gateway'
import type { Gateway, ModelCatalog } from '@plexus/gateway'
import { captureLog } from '../../../test/support/log-capture.ts'

/** A catalog whose listing fails as a bug would. */
const broken: ModelCatalog = {
  list: async () => { throw new Error('the catalog broke') },
  open: async () => undefined,
  names: async () => []
}

describe('gateway error logs', function () {
  let gw: Gateway
  let url: string
  before(async () => {
    gw = await createGateway({ catalog: broken })
    url = await gw.listen(0, '127.0.0.1')
  })
  after(async () => { await gw?.close() })

  it('logs a 5xx with its stack at error level, and a 4xx not at all', async () => {
    const lines: string[] = []
    const stop = captureLog(lines)
    try {
      assert.equal((await fetch(`${url}/v1/models`)).status, 500)
      assert.equal((await fetch(`${url}/no-such-route`)).status, 404)
    } finally { stop() }
    const logged = lines.join('\n')
    assert.match(logged, /Error: the catalog broke\n\s+at /, logged)
    assert.doesNotMatch(logged, /no-such-route/, logged)
  })
})
