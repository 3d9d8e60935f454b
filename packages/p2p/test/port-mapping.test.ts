// When a node asks its router for a port mapping (UPnP). The mapping itself, with a real router,
// is test/upnp.test.ts (network namespaces, miniupnpd).
import assert from 'node:assert/strict'
import { networkOptions } from '../src/cli-network.ts'

describe('port mapping (UPnP): when it is asked for', () => {
  it('on for a server listening on a private address; off with --no-upnp, --announce, on loopback, for bootstrap peers and on a public address', async () => {
    const lan = ['/ip4/192.168.1.2/tcp/31337']
    assert.equal((await networkOptions({ listen: lan }, 'join')).upnp, true)
    assert.equal((await networkOptions({ listen: lan, upnp: false }, 'join')).upnp, false)
    assert.equal((await networkOptions({ listen: lan, announce: ['/ip4/7.7.7.7/tcp/31337'] }, 'join')).upnp, false)
    assert.equal((await networkOptions({ listen: ['/ip4/127.0.0.1/tcp/0'] }, 'join')).upnp, false)
    assert.equal((await networkOptions({ listen: lan }, 'bootstrap')).upnp, false)
    assert.equal((await networkOptions({ listen: ['/ip4/7.7.7.2/tcp/31337'] }, 'join')).upnp, false)
    assert.equal((await networkOptions({ listen: ['/ip4/127.0.0.1/tcp/0'], upnp: true }, 'join')).upnp, true)
  })

})
