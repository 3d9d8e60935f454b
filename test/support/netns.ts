// Network topologies for tests in Linux network namespaces: switches (a bridge in a namespace of
// its own), hosts, and NAT routers (iptables MASQUERADE), every name under one unique prefix, so
// parallel runs never clash. Everything a topology makes lives inside its namespaces, so deleting
// them removes the veths, bridges and iptables rules too; that happens in destroy(), and on
// process exit when a test never got there. Needs root (and iproute2, iptables).
import { execFileSync, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** NAT behaviour of a home router. */
export type NatKind =
  /** endpoint-independent mapping: the source port is kept (Linux conntrack keeps it when it can) */
  | 'cone'
  /** a random port per destination (symmetric): hole punching cannot predict it */
  | 'symmetric'

/** How delay() delayed an interface: tc netem, or the userspace delay link (scripts/lib/delay-link.c). */
export type DelayMethod = 'netem' | 'userspace'

const live = new Set<NetnsTopology>()
let exitHook = false

/** Why this machine cannot build topologies, or undefined when it can. */
export function netnsUnavailable (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, veth pairs, iptables)'
  for (const [cmd, args] of [['ip', ['netns', 'list']], ['iptables', ['--version']], ['tc', ['-V']]] as const) {
    try { execFileSync(cmd, args, { stdio: 'ignore' }) } catch { return `needs ${cmd} (iproute2 / iptables) to be installed and usable` }
  }
  return undefined
}

export class NetnsTopology {
  readonly prefix: string
  private readonly namespaces: string[] = []
  private readonly children = new Set<ChildProcess>()
  /** For each plugged interface (`ns/dev`): the switch namespace and the veth end on its bridge. */
  private readonly ports = new Map<string, { sw: string, peer: string }>()
  private links = 0
  private delayLinks = 0

  constructor (tag = 'px') {
    // interface names are at most 15 bytes: keep the prefix short
    this.prefix = `${tag}${randomBytes(3).toString('hex')}`
    live.add(this)
    if (!exitHook) {
      exitHook = true
      process.once('exit', () => { for (const t of live) t.destroySync() })
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { for (const t of live) t.destroySync(); process.exit(130) })
    }
  }

  /** The full name of a namespace of this topology. */
  ns (name: string): string { return `${this.prefix}-${name}` }

  private addNamespace (name: string): string {
    const ns = this.ns(name)
    sh('ip', ['netns', 'add', ns])
    this.namespaces.push(ns)
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    return ns
  }

  /** A switch: a bridge in a namespace of its own. */
  addSwitch (name: string): void {
    const ns = this.addNamespace(name)
    sh('ip', ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge'])
    sh('ip', ['-n', ns, 'link', 'set', 'br0', 'up'])
  }

  /** Plugs a new interface `dev` of namespace `ns` (full name) into a switch; returns `dev`. */
  private plug (ns: string, dev: string, switchName: string, cidr: string): string {
    const sw = this.ns(switchName)
    const peer = `${this.prefix}v${this.links++}`
    const tmp = `${this.prefix}t${this.links}`
    sh('ip', ['link', 'add', tmp, 'type', 'veth', 'peer', 'name', peer])
    sh('ip', ['link', 'set', tmp, 'netns', ns])
    sh('ip', ['-n', ns, 'link', 'set', tmp, 'name', dev])
    sh('ip', ['link', 'set', peer, 'netns', sw])
    sh('ip', ['-n', sw, 'link', 'set', peer, 'master', 'br0'])
    sh('ip', ['-n', sw, 'link', 'set', peer, 'up'])
    sh('ip', ['-n', ns, 'addr', 'add', cidr, 'dev', dev])
    sh('ip', ['-n', ns, 'link', 'set', dev, 'up'])
    this.ports.set(`${ns}/${dev}`, { sw, peer })
    return dev
  }

  /** A host on a switch, with an address (`10.1.0.5/24`) and optionally a default gateway. */
  addHost (name: string, switchName: string, cidr: string, gateway?: string): string {
    const ns = this.addNamespace(name)
    this.plug(ns, 'eth0', switchName, cidr)
    if (gateway != null) sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', gateway])
    return ns
  }

  /**
   * A NAT router between a home switch (`lan`) and the outside (`wan`): forwards, and rewrites
   * its homes' source addresses to its wan address.
   */
  addRouter (name: string, wan: { switch: string, cidr: string, gateway?: string }, lan: { switch: string, cidr: string }, nat: NatKind): string {
    const ns = this.addNamespace(name)
    this.plug(ns, 'wan', wan.switch, wan.cidr)
    this.plug(ns, 'lan', lan.switch, lan.cidr)
    if (wan.gateway != null) sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', wan.gateway])
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
    sh('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-A', 'POSTROUTING', '-o', 'wan', '-j', 'MASQUERADE', ...(nat === 'symmetric' ? ['--random-fully'] : [])])
    // a home router's firewall drops unsolicited packets from outside. Without it, a hole punch's
    // first packet (sent before the peer's own went out) leaves a conntrack entry on the router that
    // takes the port the peer's mapping needs, and MASQUERADE then picks another: symmetric by accident
    sh('ip', ['netns', 'exec', ns, 'iptables', '-A', 'INPUT', '-i', 'wan', '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP'])
    return ns
  }

  /**
   * Delays what leaves a namespace's interface by `delayMs`, one way (its egress). tc netem where
   * the kernel has sch_netem; otherwise the userspace delay link: the interface's veth end is taken
   * off its switch's bridge and joined to a TAP on the bridge by scripts/lib/delay-link.c, which
   * holds the interface's outgoing frames for `delayMs` (compiled with `cc` on first use; a child
   * of the topology, killed by destroy()). Throws when neither works.
   */
  delay (name: string, dev: string, delayMs: number): DelayMethod {
    try {
      sh('ip', ['netns', 'exec', this.ns(name), 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'netem', 'delay', `${delayMs}ms`])
      return 'netem'
    } catch (err) {
      if (!/qdisc kind is unknown/.test((err as Error).message)) throw err
    }
    const port = this.ports.get(`${this.ns(name)}/${dev}`)
    if (port == null) throw new Error(`delay(): ${name}/${dev} is not plugged into a switch of this topology`)
    const bin = delayLinkBinary()
    const tap = `${this.prefix}d${this.delayLinks++}`
    sh('ip', ['-n', port.sw, 'link', 'set', port.peer, 'nomaster'])
    // the child's output goes to a file, so that this stays synchronous (like netem) while it waits for "ready"
    const log = join(tmpdir(), `${tap}-delay-link.log`)
    const fd = openSync(log, 'w+')
    const child = spawn('ip', ['netns', 'exec', port.sw, bin, port.peer, tap, String(delayMs)], { stdio: ['ignore', fd, fd] })
    closeSync(fd)
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    try {
      for (const until = Date.now() + 10_000; ;) {
        const out = readFileSync(log, 'utf8')
        if (out.startsWith('ready\n')) break
        if (out.includes('delay-link:') || out.includes('exec of') || Date.now() > until) {
          child.kill('SIGKILL')
          throw new Error(`delay(): the userspace delay link for ${name}/${dev} did not start: ${out.trim() || 'no "ready" within 10 s'}`)
        }
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10)
      }
    } finally {
      rmSync(log, { force: true })
    }
    sh('ip', ['-n', port.sw, 'link', 'set', tap, 'master', 'br0'])
    sh('ip', ['-n', port.sw, 'link', 'set', tap, 'up'])
    return 'userspace'
  }

  /** Starts `command args` inside a namespace; the process is killed by destroy(). */
  spawn (name: string, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(name), command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    return child
  }

  /** Runs a command inside a namespace to its end (throws on failure). */
  run (name: string, command: string, args: string[]): string {
    return execFileSync('ip', ['netns', 'exec', this.ns(name), command, ...args], { encoding: 'utf8' })
  }

  /** Kills what runs inside and deletes every namespace (and with them veths, bridges, rules). */
  async destroy (): Promise<void> {
    await Promise.all([...this.children].map(async c => {
      if (c.exitCode != null || c.signalCode != null) return
      const gone = new Promise(resolve => c.once('exit', resolve))
      c.kill('SIGKILL')
      await gone
    }))
    this.destroySync()
  }

  destroySync (): void {
    for (const c of this.children) if (c.exitCode == null && c.signalCode == null) c.kill('SIGKILL')
    for (const ns of this.namespaces.splice(0).reverse()) {
      try { execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n').filter(p => p !== '').forEach(p => { try { process.kill(Number(p), 'SIGKILL') } catch {} }) } catch {}
      try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }) } catch {}
    }
    live.delete(this)
  }

  /** Namespaces of this topology still present (for the tests' clean-up checks). */
  static leftovers (prefix: string): string[] {
    return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map(l => l.split(' ')[0]).filter(n => n.startsWith(`${prefix}-`))
  }
}

function sh (cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    throw new Error(`${cmd} ${args.join(' ')}: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim()}`)
  }
}

/**
 * The userspace delay link's binary, compiled from scripts/lib/delay-link.c on first use and kept
 * under .plexus/, keyed by the source's hash.
 */
function delayLinkBinary (): string {
  const src = fileURLToPath(new URL('../../scripts/lib/delay-link.c', import.meta.url))
  const hash = createHash('sha256').update(readFileSync(src)).digest('hex').slice(0, 16)
  const dir = fileURLToPath(new URL('../../.plexus/bin/', import.meta.url))
  const bin = join(dir, `delay-link-${hash}`)
  if (existsSync(bin)) return bin
  mkdirSync(dir, { recursive: true })
  const tmp = `${bin}.${process.pid}.tmp`
  try {
    execFileSync('cc', ['-O2', '-Wall', '-o', tmp, src], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer }
    if (e.code === 'ENOENT') throw new Error('delay(): this kernel has no tc netem (sch_netem), and the userspace delay link that replaces it must be compiled: install a C compiler (`cc`, e.g. apt-get install gcc)')
    throw new Error(`delay(): compiling ${src} failed: ${String(e.stderr ?? e.message).trim()}`)
  }
  renameSync(tmp, bin) // atomic: a parallel run never executes a half-written binary
  return bin
}
