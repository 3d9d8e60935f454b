// A minimal STUN server (RFC 5389 Binding requests, XOR-MAPPED-ADDRESS over UDP/IPv4) for tests:
// it tells a peer behind NAT the public address its packets come from.
import { createSocket } from 'node:dgram'

const MAGIC = 0x2112a442

/** Runs until the process ends; meant to run inside a namespace (see netns.ts) as a child process. */
export function serveStun (host: string, port: number): void {
  const socket = createSocket('udp4')
  socket.on('message', (msg, rinfo) => {
    if (msg.length < 20 || msg.readUInt16BE(0) !== 0x0001 || msg.readUInt32BE(4) !== MAGIC) return
    const res = Buffer.alloc(32)
    res.writeUInt16BE(0x0101, 0)
    res.writeUInt16BE(12, 2)
    res.writeUInt32BE(MAGIC, 4)
    msg.copy(res, 8, 8, 20)
    res.writeUInt16BE(0x0020, 20)
    res.writeUInt16BE(8, 22)
    res.writeUInt16BE(0x0001, 24)
    res.writeUInt16BE(rinfo.port ^ (MAGIC >>> 16), 26)
    const ip = rinfo.address.split('.').reduce((n, b) => (n << 8) + Number(b), 0) >>> 0
    res.writeUInt32BE((ip ^ MAGIC) >>> 0, 28)
    socket.send(res, rinfo.port, rinfo.address)
  })
  socket.bind(port, host)
}

if (process.argv[1] === new URL(import.meta.url).pathname) serveStun(process.argv[2] ?? '0.0.0.0', Number(process.argv[3] ?? 3478))
