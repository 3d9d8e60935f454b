// A tiny authoritative DNS server over UDP for tests: answers A and TXT questions from a table,
// NXDOMAIN for names it does not hold. No outside network involved.
import { createSocket } from 'node:dgram'
import type { Socket } from 'node:dgram'
import type { AddressInfo } from 'node:net'

const TYPE_A = 1
const TYPE_TXT = 16

export interface DnsRecords {
  /** name (no trailing dot, lower case) → IPv4 addresses */
  a?: Record<string, string[]>
  /** name → TXT strings (one record each) */
  txt?: Record<string, string[]>
}

export interface TestDnsServer {
  /** `IP:PORT`, as --dns-resolver takes it */
  address: string
  /** Questions asked so far, as `TYPE name`. */
  asked: string[]
  close: () => Promise<void>
}

export async function startDnsServer (records: DnsRecords, host = '127.0.0.1', port = 0): Promise<TestDnsServer> {
  const socket: Socket = createSocket(host.includes(':') ? 'udp6' : 'udp4')
  const asked: string[] = []
  socket.on('message', (msg, rinfo) => {
    try {
      const { name, type, end } = question(msg)
      asked.push(`${type === TYPE_TXT ? 'TXT' : type === TYPE_A ? 'A' : type} ${name}`)
      const answers = type === TYPE_TXT ? (records.txt?.[name] ?? []).map(txtData) : type === TYPE_A ? (records.a?.[name] ?? []).map(aData) : []
      const known = records.txt?.[name] != null || records.a?.[name] != null
      const header = Buffer.alloc(12)
      msg.copy(header, 0, 0, 2)
      header.writeUInt16BE(0x8400 | (known ? 0 : 3), 2) // response, authoritative, NOERROR or NXDOMAIN
      header.writeUInt16BE(1, 4)
      header.writeUInt16BE(answers.length, 6)
      const parts: Buffer[] = [header, Buffer.from(msg.subarray(12, end))]
      for (const data of answers) {
        const rr = Buffer.alloc(12)
        rr.writeUInt16BE(0xc00c, 0) // the question's name
        rr.writeUInt16BE(type, 2)
        rr.writeUInt16BE(1, 4)
        rr.writeUInt32BE(60, 6)
        rr.writeUInt16BE(data.length, 10)
        parts.push(rr, data)
      }
      socket.send(Buffer.concat(parts), rinfo.port, rinfo.address)
    } catch {}
  })
  await new Promise<void>(resolve => socket.bind(port, host, resolve))
  const bound = socket.address() as AddressInfo
  return {
    address: host.includes(':') ? `[${host}]:${bound.port}` : `${host}:${bound.port}`,
    asked,
    close: async () => { await new Promise<void>(resolve => socket.close(() => resolve())) }
  }
}

function question (msg: Buffer): { name: string, type: number, end: number } {
  const labels: string[] = []
  let i = 12
  while (msg[i] !== 0) {
    labels.push(msg.subarray(i + 1, i + 1 + msg[i]).toString('ascii'))
    i += 1 + msg[i]
  }
  const type = msg.readUInt16BE(i + 1)
  return { name: labels.join('.').toLowerCase(), type, end: i + 5 }
}

function txtData (text: string): Buffer {
  const parts: Buffer[] = []
  for (let i = 0; i < text.length || i === 0; i += 255) {
    const chunk = Buffer.from(text.slice(i, i + 255))
    parts.push(Buffer.from([chunk.length]), chunk)
  }
  return Buffer.concat(parts)
}

function aData (ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number))
}
