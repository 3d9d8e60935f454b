// --config FILE (YAML or JSON) and PLEXUS_* variables: command line > environment > file > defaults.
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { withConfig, ConfigFileError } from '@plexus/p2p'
import type { CliConfigSpec } from '@plexus/p2p'
import { fixtureDir, golden, runCli, CLIENT_BIN } from './support/fixtures.ts'

const CLIENT: CliConfigSpec = { schema: 'client-config', commands: { generate: ['source', 'generate'], serve: ['source', 'serving', 'serve'], mcp: ['source', 'serving'], models: ['models'] } }
const NODE: CliConfigSpec = { schema: 'node-config', commands: { bootstrap: ['common'], join: ['common', 'join'] } }

describe('configuration files and environment variables', function () {
  this.timeout(120_000)
  let dir: string
  const file = async (name: string, text: string): Promise<string> => { const p = join(dir, name); await writeFile(p, text); return p }

  before(async () => { dir = await mkdtemp(join(tmpdir(), 'plexus-config-')) })
  after(async () => { if (dir != null) await rm(dir, { recursive: true, force: true }) })

  it('fills in what the command line leaves out: command line > environment > file', async () => {
    const yaml = await file('serve.yaml', 'bootstrap:\n  - /ip4/10.0.0.1/tcp/1/p2p/A\n  - /ip4/10.0.0.2/tcp/1/p2p/B\nport: 8000\nhost: 0.0.0.0\nmax-concurrent: 4\nlocal: false\nprompt: only for generate\n')
    const env = {}
    assert.deepEqual(withConfig(['serve', '--config', yaml, '--port', '9000'], CLIENT, env),
      ['serve', '--port', '9000', '--bootstrap', '/ip4/10.0.0.1/tcp/1/p2p/A', '--bootstrap', '/ip4/10.0.0.2/tcp/1/p2p/B', '--host', '0.0.0.0', '--max-concurrent', '4', '--no-local'])
    // the environment beats the file, the command line beats both; lists split on spaces or commas
    const out = withConfig(['serve', `--config=${yaml}`, '--host', '127.0.0.1'], CLIENT, { PLEXUS_PORT: '7000', PLEXUS_HOST: '10.1.1.1', PLEXUS_BOOTSTRAP: '/ip4/1.1.1.1/tcp/1/p2p/C, /ip4/2.2.2.2/tcp/1/p2p/D' })
    assert.deepEqual(out, ['serve', '--host', '127.0.0.1', '--bootstrap', '/ip4/1.1.1.1/tcp/1/p2p/C', '--bootstrap', '/ip4/2.2.2.2/tcp/1/p2p/D', '--port', '7000', '--max-concurrent', '4', '--no-local'])
    // $PLEXUS_CONFIG names the file when --config does not; a variable of another command is left alone
    assert.deepEqual(withConfig(['join', '--bootstrap', 'X'], NODE, { PLEXUS_CONFIG: await file('node.json', '{"model": "./m", "blocks": "0:4", "webrtc": true}'), PLEXUS_API_KEY: 'k' }),
      ['join', '--bootstrap', 'X', '--model', './m', '--blocks', '0:4', '--webrtc'])
    // --help and unknown commands go to yargs untouched
    assert.deepEqual(withConfig(['--help'], NODE, {}), ['--help'])
  })

  it('a bad file or variable is an error naming the key, the file and what is wrong', async () => {
    // an empty file sets nothing
    assert.deepEqual(withConfig(['join', '--config', await file('empty.yaml', '')], NODE, {}), ['join'])
    assert.throws(() => withConfig(['join', '--config', join(dir, 'missing.yaml')], NODE, {}), /--config .*missing\.yaml: cannot read it \(ENOENT\)/)
    await file('typo.yaml', 'modle: ./m\n')
    assert.throws(() => withConfig(['join', '--config', join(dir, 'typo.yaml')], NODE, {}), (e: any) => e instanceof ConfigFileError && /"modle"/.test(e.message) && /flags without "--"/.test(e.message))
    await file('type.yaml', 'max-sessions: lots\n')
    assert.throws(() => withConfig(['join', '--config', join(dir, 'type.yaml')], NODE, {}), /\/max-sessions: must be integer/)
    await file('syntax.json', '{"model": ')
    assert.throws(() => withConfig(['join', '--config', join(dir, 'syntax.json')], NODE, {}), /syntax\.json: not valid JSON/)
    await file('syntax.yaml', 'model: [unclosed\n')
    assert.throws(() => withConfig(['join', '--config', join(dir, 'syntax.yaml')], NODE, {}), /syntax\.yaml: not valid YAML/)
    assert.throws(() => withConfig(['join'], NODE, { PLEXUS_METRICS_PORT: 'ninety' }), /PLEXUS_METRICS_PORT=ninety: expected an integer/)
    assert.throws(() => withConfig(['join', '--config'], NODE, {}), /--config needs a file/)
  })

  it('plexus-client generate takes its flags from a file, and says what is wrong with one', async () => {
    const g = golden('tiny-llama')
    const cfg = await file('generate.yaml', `local: true\nmodel: ${fixtureDir('tiny-llama')}\ntoken-ids: "${g.prompt_ids.join(',')}"\nmax-tokens: ${g.greedy_new_ids.length}\nignore-eos: true\njson: true\n`)
    const r = await runCli(CLIENT_BIN, ['generate', '--config', cfg])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout).token_ids, g.greedy_new_ids)
    // the command line still wins: fewer tokens
    const short = await runCli(CLIENT_BIN, ['generate', '--config', cfg, '--max-tokens', '2'])
    assert.deepEqual(JSON.parse(short.stdout).token_ids, g.greedy_new_ids.slice(0, 2))
    const typo = await file('typo-client.yaml', 'temprature: 0.5\n')
    const bad = await runCli(CLIENT_BIN, ['generate', '--config', typo, '--local', '--model', fixtureDir('tiny-llama'), '--prompt', 'x'])
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /plexus-client: --config .*typo-client\.yaml: at \(root\): must NOT have unevaluated properties "temprature"/)
    assert.ok(!/\n\s+at /.test(bad.stderr), bad.stderr)
  })
})
