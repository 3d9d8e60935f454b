// Network topologies for tests in Linux network namespaces: switches (a bridge in a namespace of
// its own), hosts, and NAT routers (iptables MASQUERADE), every name under one unique prefix, so
// parallel runs never clash. Everything a topology makes lives inside its namespaces, so deleting
// them removes the veths, bridges and iptables rules too; that happens in destroy(), and on
// process exit when a test never got there. Needs root (and iproute2, iptables).
import { execFileSync, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'

/** NAT behaviour of a home router. */
export type NatKind =
  /** endpoint-independent mapping: the source port is kept (Linux conntrack keeps it when it can) */
  | 'cone'
  /** a random port per destination (symmetric): hole punching cannot predict it */
  | 'symmetric'

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
  private links = 0

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
   * Delays what leaves a namespace's interface by `delayMs` (tc netem). False when this kernel
   * has no netem (sch_netem): callers say so in their output rather than fail.
   */
  delay (name: string, dev: string, delayMs: number): boolean {
    try {
      sh('ip', ['netns', 'exec', this.ns(name), 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'netem', 'delay', `${delayMs}ms`])
      return true
    } catch (err) {
      if (/qdisc kind is unknown/.test((err as Error).message)) return false
      throw err
    }
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
