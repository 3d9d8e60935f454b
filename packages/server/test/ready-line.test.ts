// The ready line's note on a port mapping (UPnP): which ports the router forwards.
import assert from 'node:assert/strict'
import { readyLine } from '../src/ready-line.ts'

describe('ready line', () => {
  it('says which ports the router forwards, and nothing when it forwards none', () => {
    const base = { peerId: '12D3KooWx', role: 'server' as const, backend: 'cpu', modelName: 'tiny', modelId: 'ab'.repeat(32), numBlocks: 3, start: 0, end: 3, addrs: ['/ip4/7.7.7.11/tcp/31337/p2p/12D3KooWx'] }
    assert.match(readyLine({ ...base, reachable: 'yes', mapped: ['/ip4/7.7.7.11/tcp/31337', '/ip4/7.7.7.11/udp/31337/quic-v1'] }),
      /; reachable: yes \(ports forwarded by the router over UPnP: \/ip4\/7\.7\.7\.11\/tcp\/31337, \/ip4\/7\.7\.7\.11\/udp\/31337\/quic-v1\)$/)
    assert.match(readyLine({ ...base, reachable: 'relayed' }), /; reachable: relayed$/)
  })
})
