// One error vocabulary: every expected error is a PlexusError, and the CLIs and the gateway decide
// by its code, HTTP status and exit code alone.
import assert from 'node:assert/strict'
import * as runtime from '@plexus/runtime'
import * as p2p from '@plexus/p2p'
import * as client from '@plexus/client'
import { toApiError } from '@plexus/gateway'
import { PlexusError, UsageError, TrustError, ConfigError, parseTrust, postedError } from '@plexus/runtime'
import { NoRouteError, RemoteError, PeerFailure, ModelFetchError, SwarmUnreachableError } from '@plexus/client'
import { runCli, CLIENT_BIN } from './support/fixtures.ts'

const NODE_BIN = 'packages/server/bin/plexus-node.js'

/** Every class a package exports that extends PlexusError. */
function plexusErrors (mod: Record<string, unknown>): Array<[string, new (...args: any[]) => PlexusError]> {
  return Object.entries(mod).filter((e): e is [string, new (...args: any[]) => PlexusError] =>
    typeof e[1] === 'function' && (e[1] as Function).prototype instanceof PlexusError)
}

describe('errors: one vocabulary', () => {
  it('the errors the CLIs and the gateway expect are PlexusErrors, each with a code, a status and exit code 2', () => {
    const classes = [...plexusErrors(runtime), ...plexusErrors(p2p), ...plexusErrors(client)]
    const names = classes.map(([n]) => n)
    for (const expected of ['UsageError', 'ConfigError', 'ConfigFileError', 'CheckpointError', 'GgufError', 'WeightsMismatchError', 'BackendError',
      'SpanError', 'RecordError', 'NoRouteError', 'RemoteError', 'PeerFailure', 'ModelFetchError', 'ModelFilesMismatchError', 'TrustError',
      'SwarmUnreachableError', 'SpeculativeError', 'SwarmKeyError', 'DnsAddrError', 'TemplateError', 'KeyFileError', 'TokenizerError', 'PeerSilentError']) {
      assert.ok(names.includes(expected), `${expected} is not a PlexusError`)
    }
    for (const [name, C] of classes) {
      // constructors take a message and, some, a code or a peer first: two non-empty strings fit all
      const err = new C('some-code', 'a message', 'a third')
      assert.equal(typeof err.code, 'string', name)
      assert.notEqual(err.code, '', `${name} has an empty code`)
      assert.ok(err.httpStatus >= 400 && err.httpStatus < 600, `${name}: status ${err.httpStatus}`)
      assert.equal(err.exitCode, 2, name)
      assert.equal(err.name, name, `${name} keeps its name`)
    }
    assert.equal(new UsageError('x').code, 'usage')
    assert.equal(new ConfigError('x').code, 'model-config')
    assert.equal(new NoRouteError('x', []).code, 'no-route')
    // a wire error keeps the server's code
    assert.equal(new RemoteError('12D3KooWpeer', 'busy', 'x').code, 'busy')
  })

  it('the gateway maps a PlexusError by its status and code', () => {
    const noRoute = toApiError(new NoRouteError('no peer serves blocks 3..5 of tiny', [[3, 5]]))
    assert.equal(noRoute.status, 503)
    assert.equal(noRoute.code, 'swarm_unavailable')
    assert.match(noRoute.message, /^the swarm could not serve this request: no peer serves/)
    for (const err of [new RemoteError('12D3KooWpeer', 'busy', 'x'), new PeerFailure('12D3KooWpeer', 'x'), new ModelFetchError('x'), new SwarmUnreachableError('x')]) {
      assert.equal(toApiError(err).status, 503, err.name)
      assert.equal(toApiError(err).code, 'swarm_unavailable', err.name)
    }

    const unavailable = toApiError(new TrustError('trust-unavailable', 'no verifier can check blocks 0..3'))
    assert.deepEqual([unavailable.status, unavailable.code, unavailable.param], [503, 'verification_unavailable', 'X-Plexus-Trust'])
    const attested = toApiError(caught(() => parseTrust('attested', 'X-Plexus-Trust')))
    assert.deepEqual([attested.status, attested.code, attested.param], [501, 'trust_mode_not_supported', 'X-Plexus-Trust'])
    assert.match(attested.message, /^X-Plexus-Trust attested is not supported yet/)
    const unknown = toApiError(caught(() => parseTrust('sure', 'X-Plexus-Trust')))
    assert.deepEqual([unknown.status, unknown.param], [400, 'X-Plexus-Trust'])

    const usage = toApiError(new UsageError('give exactly one of --prompt or --token-ids'))
    assert.deepEqual([usage.status, usage.code], [400, 'usage'])
    // a broken model is not the request's fault, and not the swarm's
    const broken = toApiError(new ConfigError('config.json: cannot read model config (ENOENT)'))
    assert.equal(broken.status, 500)
    // and anything not ours stays an internal error
    assert.equal(toApiError(new Error('oops')).status, 500)
  })

  it('a PlexusError crosses a worker thread with its code', () => {
    assert.deepEqual(postedError(new ConfigError('bad config')), { name: 'ConfigError', message: 'bad config', code: 'model-config', httpStatus: 500 })
    assert.deepEqual(postedError(new TypeError('bug')), { name: 'TypeError', message: 'bug' })
  })

  it('plexus-client: an expected error is one line and exit 2, named by its code in JSON', async () => {
    const args = ['generate', '--local', '--model', '/nonexistent/model', '--token-ids', '1', '--backend', 'cpu']
    const text = await runCli(CLIENT_BIN, args)
    assert.equal(text.code, 2, text.stderr)
    assert.equal(text.stderr, 'plexus-client: /nonexistent/model/config.json: cannot read model config (ENOENT)\n')

    const json = await runCli(CLIENT_BIN, args, { env: { ...process.env, PLEXUS_LOG_FORMAT: 'json' } })
    assert.equal(json.code, 2, json.stderr)
    const lines = json.stderr.trim().split('\n').map(l => JSON.parse(l))
    assert.equal(lines.length, 1, json.stderr)
    assert.equal(lines[0].error, 'ConfigError')
    assert.equal(lines[0].code, 'model-config')

    // a usage error says where to read more
    const usage = await runCli(CLIENT_BIN, ['generate', '--local', '--model', '/nonexistent/model', '--stun', 'nope', '--token-ids', '1'])
    assert.equal(usage.code, 2, usage.stderr)
    assert.equal(usage.stderr, 'plexus-client: bad --stun nope: expected stun:HOST:PORT\nRun plexus-client --help for usage.\n')
  })

  it('plexus-node: a usage error by its code, exit 2', async () => {
    const r = await runCli(NODE_BIN, ['bootstrap', '--listen', '/ip4/127.0.0.1/tcp/0', '--stun', 'nope'], { env: { ...process.env, PLEXUS_LOG_FORMAT: 'json' } })
    assert.equal(r.code, 2, r.stderr)
    const lines = r.stderr.trim().split('\n').map(l => JSON.parse(l))
    assert.equal(lines.length, 1, r.stderr)
    assert.deepEqual([lines[0].error, lines[0].code], ['UsageError', 'usage'])
    assert.match(lines[0].msg, /^bad --stun nope: expected stun:HOST:PORT/)
  })
})

function caught (fn: () => unknown): unknown {
  try { fn() } catch (err) { return err }
  assert.fail('expected a throw')
}
