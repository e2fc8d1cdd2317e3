/**
 * The escape and abuse suite (issue 4): from inside a sandbox, every attempt
 * to reach the host, other sandboxes or the server must fail, and leave the
 * server healthy and other sandboxes untouched. Each runtime gets its own real
 * kiln (SQLite, a data dir with a token file beside the store, a config file)
 * and is attacked through the API only: runs, session exec and session files.
 *
 * Every attempt is counted; the last test prints `escape suite: N attempts, N blocked`.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { TemplateConfig } from '../../src/config/schema.js';
import { startTestKiln, type TestKiln } from '../helpers.js';
import { LOCAL } from '../../src/auth/principal.js';
import {
  COUNTED_FORKS, DISK_FILL, FORK_BOMB, HOST_PROCESSES, HUGE_NAMES, MEMORY_HOG, NETWORK, PRIVILEGED, READ_SECRETS,
  parseResults, program, type Outcome, type Results,
} from './attacks.js';

interface RuntimeUnderTest {
  runtime: string;
  /** How a template of this runtime says where its python3 comes from. */
  template: Pick<TemplateConfig, 'runtime' | 'image'>;
  /**
   * What stops a run (no main process) filling its work dir: `disk` (a tmpfs
   * capped at diskMb: ENOSPC) or `memory` (the process runtime keeps a run's
   * work dir on the host, charged to the run's memory cgroup: memory_limit).
   */
  runWorkDirCap: 'disk' | 'memory';
}

/** The runtimes attacked, one entry each: every attack runs on every runtime. */
const RUNTIMES: RuntimeUnderTest[] = [
  { runtime: 'process', template: { runtime: 'process' }, runWorkDirCap: 'memory' },
  { runtime: 'docker', template: { runtime: 'docker', image: 'kiln-python:local' }, runWorkDirCap: 'disk' },
  { runtime: 'gvisor', template: { runtime: 'gvisor', image: 'kiln-python:local' }, runWorkDirCap: 'disk' },
];

const DISK_MB = 16;
const SESSION_LIMITS = { cpus: 0.5, memoryMb: 192, pids: 64, diskMb: DISK_MB };
const RUN_LIMITS = { cpus: 0.5, memoryMb: 256, pids: 64, diskMb: DISK_MB };

// ---- the tally -------------------------------------------------------------

const tally = new Map<string, { attempts: number; blocked: number }>();
function count(runtime: string, blocked: boolean): void {
  const t = tally.get(runtime) ?? { attempts: 0, blocked: 0 };
  t.attempts++;
  if (blocked) t.blocked++;
  tally.set(runtime, t);
}

/** One attempt: counted, and blocked only when `check` passes (it throws otherwise, failing the test). */
async function attempt(runtime: string, check: () => void | Promise<void>): Promise<void> {
  let ok = false;
  try {
    await check();
    ok = true;
  } finally {
    count(runtime, ok);
  }
}

// ---- errno sets that count as "refused" ------------------------------------

const NO_ACCESS = ['ENOENT', 'EACCES', 'EPERM', 'EROFS'];
const NO_PRIVILEGE = ['EPERM', 'EACCES'];

function isRefused(o: Outcome | undefined, errnos: string[]): boolean {
  return o !== undefined && !o.ok && o.errno !== undefined && errnos.includes(o.errno);
}

// ---- host-side facts -------------------------------------------------------

const sha = (path: string) => (existsSync(path) ? createHash('sha256').update(readFileSync(path)).digest('hex') : 'absent');

/** Every address of this host, loopback included (link-local ones cannot be named without a scope). */
function hostAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (!a.address.startsWith('fe80:')) out.push(a.address);
  return out;
}

function pidsOf(comm: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/comm`, 'utf8').trim() === comm;
      } catch {
        return false;
      }
    })
    .map(Number);
}

// ---- the fixture: one kiln per runtime --------------------------------------

interface Fixture {
  rt: RuntimeUnderTest;
  t: TestKiln;
  base: string;
  port: number;
  dir: string;
  dataDir: string;
  configPath: string;
  tokenPath: string;
  /** A listener on every host address, and one abstract unix socket: the sandbox must never reach them. */
  listener: net.Server;
  abstract: net.Server;
  abstractName: string;
  reached: string[];
  /** Host files whose contents must never change. */
  guarded: string[];
  hashes: Map<string, string>;
}

async function startFixture(rt: RuntimeUnderTest): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), `kiln-escape-${rt.runtime}-`));
  const dataDir = join(dir, 'data');
  mkdirSync(dataDir, { mode: 0o700 });
  const tokenPath = join(dataDir, 'tokens.json');
  writeFileSync(tokenPath, JSON.stringify({ admin: `kiln_secret_${randomBytes(16).toString('hex')}` }), { mode: 0o600 });
  const configPath = join(dir, 'kiln.yaml');
  const session: TemplateConfig = { ...rt.template, command: ['python3', '/usr/share/kiln/demo_server.py'], port: 8080, ready: { http: '/' }, pool: { min: 0, max: 8 }, limits: SESSION_LIMITS };
  writeFileSync(
    configPath,
    toYaml({
      server: { logLevel: 'silent' },
      budget: { cpuTotal: 8, memoryTotalMb: 8192 },
      templates: { 'esc-run': { ...rt.template, limits: RUN_LIMITS }, 'esc-web': session },
      languages: { 'esc-python': { template: 'esc-run', file: 'main.py', run: ['python3', 'main.py'] } },
    }),
    { mode: 0o600 },
  );
  const { config } = loadConfig({ file: configPath, env: {}, flags: { 'server.dataDir': dataDir } });
  const t = await startTestKiln(config);
  const base = await t.app.listen({ port: 0, host: '127.0.0.1' });
  const port = (t.app.server.address() as net.AddressInfo).port;

  const reached: string[] = [];
  const listener = net.createServer((s) => {
    reached.push(`tcp from ${s.remoteAddress}`);
    s.destroy();
  });
  await new Promise<void>((ok) => listener.listen({ port: 0, host: '::', ipv6Only: false }, ok));
  listener.on('error', () => undefined);
  const abstractName = `kiln-escape-${randomBytes(6).toString('hex')}`;
  const abstract = net.createServer((s) => {
    reached.push('abstract unix socket');
    s.destroy();
  });
  await new Promise<void>((ok) => abstract.listen(`\0${abstractName}`, ok));

  const instanceId = join(dataDir, 'instance-id');
  const guarded = ['/etc/passwd', '/etc/shadow', tokenPath, instanceId, configPath];
  const hashes = new Map(guarded.map((p) => [p, sha(p)]));
  return { rt, t, base, port, dir, dataDir, configPath, tokenPath, listener, abstract, abstractName, reached, guarded, hashes };
}

async function stopFixture(f: Fixture): Promise<void> {
  f.listener.close();
  f.abstract.close();
  await f.t.close();
  rmSync(f.dir, { recursive: true, force: true });
}

// ---- HTTP --------------------------------------------------------------------

interface Answer {
  status: number;
  body: any;
  text: string;
}

async function api(f: Fixture, method: string, path: string, body?: unknown): Promise<Answer> {
  const res = await fetch(f.base + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(120_000),
  });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, body: parsed, text };
}

/** A request whose path is sent exactly as written (fetch would resolve `..` first). */
function raw(f: Fixture, method: string, path: string, body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: f.port, method, path, signal: AbortSignal.timeout(60_000) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('latin1') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function newSession(f: Fixture): Promise<string> {
  const s = await api(f, 'POST', '/v1/sessions', { template: 'esc-web' });
  assert.equal(s.status, 201, s.text);
  for (let i = 0; i < 600; i++) {
    const g = await api(f, 'GET', `/v1/sessions/${s.body.id}`);
    if (g.body.status === 'ready') return s.body.id as string;
    assert.equal(g.body.status, 'starting', g.text);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail('the session never became ready');
}

async function exec(f: Fixture, id: string, command: string[], timeoutMs = 20_000): Promise<Answer> {
  return api(f, 'POST', `/v1/sessions/${id}/exec`, { command, timeoutMs });
}

/** The attack as a run (a fresh sandbox) and as an exec in a session (beside a server); the results of each. */
async function viaRun(f: Fixture, attack: string, ctx: unknown, limits: object = {}): Promise<Results> {
  const r = await api(f, 'POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: program(attack, ctx) }], limits });
  assert.equal(r.status, 200, r.text);
  const results = parseResults(r.body.run?.stdout ?? '');
  assert.ok(results, `no result line from the run: ${r.text.slice(0, 2000)}`);
  return results;
}

async function viaExec(f: Fixture, session: string, attack: string, ctx: unknown, timeoutMs?: number): Promise<Results> {
  const r = await exec(f, session, ['python3', '-c', program(attack, ctx)], timeoutMs);
  assert.equal(r.status, 200, r.text);
  const results = parseResults(r.body.stdout);
  assert.ok(results, `no result line from the exec: ${r.text.slice(0, 2000)}`);
  return results;
}

/** Count and check every key of `results` that `expect` names; the control must have worked. */
async function judge(f: Fixture, where: string, results: Results, expect: (key: string) => string[] | 'skip', control?: (o: Outcome) => void): Promise<void> {
  for (const [key, outcome] of Object.entries(results)) {
    if (key.startsWith('control')) continue;
    const errnos = expect(key);
    if (errnos === 'skip') continue;
    await attempt(f.rt.runtime, () => assert.ok(isRefused(outcome, errnos), `${where}: "${key}" was not refused with ${errnos.join('/')}: ${JSON.stringify(outcome)}`));
  }
  const ctl = Object.entries(results).find(([k]) => k.startsWith('control'));
  assert.ok(ctl, `${where}: the attack has no positive control`);
  assert.equal(ctl[1].ok, true, `${where}: the positive control failed, so the refusals prove nothing: ${JSON.stringify(ctl[1])}`);
  control?.(ctl[1]);
}

// ---- the suite -----------------------------------------------------------------

for (const rt of RUNTIMES) {
  describe(`escape attempts on the ${rt.runtime} runtime`, () => {
    let f: Fixture;
    let bystander: string;
    const bystanderNote = `untouched ${randomBytes(8).toString('hex')}`;
    let attacker: string;

    before(async () => {
      f = await startFixture(rt);
      // A second sandbox made before any attack: it must come out of them unharmed.
      bystander = await newSession(f);
      const put = await fetch(`${f.base}/v1/sessions/${bystander}/files/keep/note.txt`, { method: 'PUT', body: bystanderNote });
      assert.equal(put.status, 204);
      attacker = await newSession(f);
    });
    after(async () => {
      await stopFixture(f);
    });

    test('reading /etc/shadow, the data dir (store, instance id, tokens) and the config fails', async () => {
      const ctx = {
        files: ['/etc/shadow', join(f.dataDir, 'kiln.db'), join(f.dataDir, 'instance-id'), f.tokenPath, f.configPath],
        dirs: [f.dataDir, f.dir, '/run/kiln', '/root'],
        dataDir: f.dataDir,
      };
      for (const [where, results] of [['run', await viaRun(f, READ_SECRETS, ctx)], ['exec', await viaExec(f, attacker, READ_SECRETS, ctx)]] as const) {
        await judge(f, where, results, () => NO_ACCESS, (c) => assert.equal(c.value, 'mine'));
      }
    });

    test('host processes are neither visible nor signalled nor traced', async () => {
      const hostPids = [process.pid, ...pidsOf('dockerd'), ...pidsOf('containerd')];
      const hostCommands = new Set(hostPids.map((p) => readFileSync(`/proc/${p}/cmdline`, 'latin1').replaceAll('\0', ' ')));
      const ctx = { hostPids, killAll: false };
      const runResults = await viaRun(f, HOST_PROCESSES, { ...ctx, killAll: true });
      const execResults = await viaExec(f, attacker, HOST_PROCESSES, ctx);
      for (const [where, results] of [['run', runResults], ['exec', execResults]] as const) {
        const visible = Object.values((results.visible!.value ?? {}) as Record<string, string>);
        await attempt(rt.runtime, () => assert.ok(!visible.some((c) => hostCommands.has(c)), `${where}: host processes are visible: ${JSON.stringify(visible)}`));
        assert.ok(visible.some((c) => c.includes('python3')), `${where}: the attack sees its own process`);
        await judge(f, where, results, (key) => (key === 'visible' || key.startsWith('kill -1') ? 'skip' : ['ESRCH', 'ENOENT', 'EPERM']));
      }
      // kill -1 took down everything the run could see; the server and the other sandboxes must not notice.
      await attempt(rt.runtime, async () => {
        assert.equal((await api(f, 'GET', '/healthz')).status, 200);
        assert.equal((await exec(f, bystander, ['true'])).body.exitCode, 0);
      });
    });

    test('no network: only lo, no route, and neither the API nor any host address, unix socket or the world answers', async () => {
      const hostAddrs = hostAddresses();
      assert.ok(hostAddrs.includes('127.0.0.1'));
      const listenerPort = (f.listener.address() as net.AddressInfo).port;
      // Before the attack, prove the host listener answers on every address it will be tried on.
      for (const addr of hostAddrs) {
        await new Promise<void>((ok, fail) => net.connect({ host: addr, port: listenerPort }).once('connect', function (this: net.Socket) { this.destroy(); ok(); }).once('error', fail));
      }
      await new Promise<void>((ok, fail) => net.connect(`\0${f.abstractName}`).once('connect', function (this: net.Socket) { this.destroy(); ok(); }).once('error', fail));
      // The host side counts each accept a moment after the client sees its connect: wait for it (bounded, not timed).
      for (let i = 0; i < 3000 && f.reached.length < hostAddrs.length + 1; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(f.reached.length, hostAddrs.length + 1, 'the host listeners answer from the host');
      f.reached.length = 0;

      const ctx = { hostAddrs, ports: [listenerPort, f.port], worldAddrs: ['10.255.255.1', '198.51.100.7'], abstractName: f.abstractName };
      for (const [where, results] of [['run', await viaRun(f, NETWORK, ctx)], ['exec', await viaExec(f, attacker, NETWORK, ctx)]] as const) {
        await attempt(rt.runtime, () => assert.deepEqual(results.interfaces!.value, ['lo'], `${where}: interfaces`));
        await attempt(rt.runtime, () => assert.deepEqual(results['ipv4 routes']!.value, [], `${where}: IPv4 routes`));
        await attempt(rt.runtime, () => assert.deepEqual(results['ipv6 routes off lo']!.value, [], `${where}: IPv6 routes`));
        await attempt(rt.runtime, () => assert.ok(Object.keys(results).some((k) => k.startsWith('tcp world')), `${where}: the world was not tried (a route exists?)`));
        await judge(f, where, results, (key) => {
          if (key === 'interfaces' || key.includes('routes')) return 'skip';
          // gVisor's netstack says EHOSTUNREACH for some addresses: no route all the same.
          if (key.startsWith('tcp world')) return ['ENETUNREACH', 'EHOSTUNREACH'];
          if (key.includes('unix')) return ['ECONNREFUSED', 'ENOENT'];
          const addr = key.split(' ')[1]!;
          // The sandbox's own loopback refuses (nothing of the host listens there); any other address has no route.
          if (addr.startsWith('127.') || addr === '::1') return ['ECONNREFUSED', 'EADDRNOTAVAIL', 'ENETUNREACH'];
          return ['ENETUNREACH', 'EHOSTUNREACH', 'EADDRNOTAVAIL'];
        }, (c) => assert.equal(c.value, 'connected'));
      }
      await attempt(rt.runtime, () => assert.deepEqual(f.reached, [], 'a host listener was reached from a sandbox'));
    });

    test('mount, unshare, module loading, raw sockets, setuid, chroot, mknod, sysrq, reboot all fail', async () => {
      const expectFor = (key: string): string[] => {
        if (key.startsWith('unshare user')) return ['EPERM', 'ENOSPC', 'EINVAL']; // ENOSPC: user namespaces are capped at 0 inside
        if (key.includes('module')) return ['EPERM', 'ENOSYS']; // ENOSYS: a kernel built without modules
        if (key.includes('socket')) return ['EPERM', 'EAFNOSUPPORT'];
        if (key.startsWith('write')) return ['EACCES', 'EROFS', 'ENOENT', 'EPERM'];
        if (key.startsWith('hard link')) return ['ENOENT', 'EXDEV', 'EPERM'];
        if (key.startsWith('umount')) return ['EPERM', 'EINVAL'];
        if (key.startsWith('setuid')) return ['EPERM', 'EINVAL']; // EINVAL: uid 0 is not even mapped in the sandbox's user namespace
        return NO_PRIVILEGE;
      };
      for (const [where, results] of [['run', await viaRun(f, PRIVILEGED, {})], ['exec', await viaExec(f, attacker, PRIVILEGED, {})]] as const) {
        await judge(f, where, results, expectFor, (c) => assert.notEqual(c.value, 0));
      }
    });

    test('planted symlinks: the API never reads or writes the host through them, and clean-up does not follow them', async () => {
      const linker = await newSession(f);
      const plant = await exec(f, linker, ['sh', '-c', `ln -s /etc/passwd x && ln -s '${f.dataDir}' d && ln -s '${f.configPath}' c && ln -s / root && mkdir sub && ln -s /etc sub/etc`]);
      assert.equal(plant.body.exitCode, 0, plant.text);
      const secret = readFileSync(f.tokenPath, 'utf8');
      const passwd = readFileSync('/etc/passwd', 'utf8');
      const leaks = (text: string) => text.includes(secret) || text === passwd || text.includes('SQLite format');
      const reads = ['x', 'd/tokens.json', 'd/instance-id', 'd/kiln.db', 'c', 'root/etc/shadow', `root${f.tokenPath}`, 'sub/etc/passwd'];
      for (const path of reads) {
        await attempt(rt.runtime, async () => {
          const r = await raw(f, 'GET', `/v1/sessions/${linker}/files/${path}`);
          assert.ok(!leaks(r.text), `GET files/${path} returned host content`);
          if (r.status === 200) {
            // Only what the sandbox itself reads there (docker's image has an /etc/passwd of its own).
            const inside = await exec(f, linker, ['cat', path]);
            assert.equal(inside.body.exitCode, 0, `GET files/${path} answered what the sandbox cannot read: ${inside.text}`);
            assert.equal(r.text, inside.body.stdout);
          } else {
            assert.ok(r.status >= 400 && r.status < 500, `GET files/${path}: ${r.status} ${r.text.slice(0, 200)}`);
          }
        });
      }
      const writes = ['x', 'd/tokens.json', 'd/planted', 'c', `root${f.dataDir}/planted2`, 'root/etc/kiln-escape-planted', 'sub/etc/passwd'];
      for (const path of writes) {
        await attempt(rt.runtime, async () => {
          const r = await raw(f, 'PUT', `/v1/sessions/${linker}/files/${path}`, 'pwned:x:0:0::/:/bin/sh\n');
          assert.ok(r.status === 204 || (r.status >= 400 && r.status < 500), `PUT files/${path}: ${r.status} ${r.text}`);
        });
      }
      // A run plants links too, then ends: its clean-up must remove the links, not what they point at.
      const runLinks = String.raw`
attempt('link to the data dir', lambda: os.symlink(CTX['dataDir'], 'data'))
attempt('link to /etc', lambda: os.symlink('/etc', 'etc'))
attempt('control: a file of its own', lambda: open('mine', 'w').write('x'))
`;
      const planted = await viaRun(f, runLinks, { dataDir: f.dataDir });
      assert.equal(planted['control: a file of its own']?.ok, true, JSON.stringify(planted));
      await attempt(rt.runtime, async () => {
        assert.equal((await api(f, 'DELETE', `/v1/sessions/${linker}`)).body.status, 'stopped');
      });
      for (const p of f.guarded) await attempt(rt.runtime, () => assert.equal(sha(p), f.hashes.get(p), `${p} changed`));
      await attempt(rt.runtime, () => {
        assert.ok(!existsSync(join(f.dataDir, 'planted')) && !existsSync(join(f.dataDir, 'planted2')) && !existsSync('/etc/kiln-escape-planted'), 'a file was planted on the host');
        assert.ok(existsSync(join(f.dataDir, 'kiln.db')), 'the store survived the clean-up');
      });
    });

    test('path traversal over HTTP: .., encoded .., absolute paths, NUL and backslashes are 4xx, never host content', async () => {
      const passwdHead = readFileSync('/etc/passwd', 'utf8').split('\n')[0]!;
      const paths = [
        '../../../../etc/passwd',
        '%2e%2e/%2e%2e/%2e%2e/etc/passwd',
        '..%2f..%2f..%2fetc%2fpasswd',
        '%2e%2e%2f%2e%2e%2fetc%2fshadow',
        '/etc/passwd',
        '%2fetc%2fpasswd',
        `%2f${encodeURIComponent(f.tokenPath.slice(1))}`,
        'a/../../../etc/passwd',
        'passwd%00.txt',
        '%00',
        '..%5c..%5cetc%5cpasswd',
        'a/./b',
        '',
      ];
      for (const p of paths) {
        for (const method of ['GET', 'PUT']) {
          await attempt(rt.runtime, async () => {
            const r = await raw(f, method, `/v1/sessions/${attacker}/files/${p}`, method === 'PUT' ? 'pwned' : undefined);
            assert.ok(r.status >= 400 && r.status < 500, `${method} files/${p}: ${r.status} ${r.text.slice(0, 200)}`);
            assert.ok(!r.text.includes(passwdHead), `${method} files/${p} returned /etc/passwd`);
          });
        }
      }
      for (const p of f.guarded) assert.equal(sha(p), f.hashes.get(p), `${p} changed`);
      // The same route works for a plain name, so the refusals above are about the paths.
      assert.equal((await raw(f, 'PUT', `/v1/sessions/${attacker}/files/plain.txt`, 'ok')).status, 204);
      assert.equal((await raw(f, 'GET', `/v1/sessions/${attacker}/files/plain.txt`)).text, 'ok');
    });

    test('a fork bomb hits the pids limit, ends at its deadline, and the server keeps answering', async () => {
      // Counted: forks stop below the limit with EAGAIN. A fork takes ~0.2 s under gVisor's ptrace platform at 0.5 CPU: a long deadline.
      for (const [where, results, limit] of [
        ['run', await viaRun(f, COUNTED_FORKS, {}, { pids: 32, wallMs: 40_000, cpuMs: 40_000 }), 32],
        ['exec', await viaExec(f, attacker, COUNTED_FORKS, {}, 60_000), SESSION_LIMITS.pids],
      ] as const) {
        await attempt(rt.runtime, () => {
          assert.ok(isRefused(results['fork until refused'], ['EAGAIN']), `${where}: ${JSON.stringify(results['fork until refused'])}`);
          const forked = results.forked!.value as number;
          assert.ok(forked > 0 && forked < limit, `${where}: forked ${forked} with a limit of ${limit}`);
        });
      }
      // Unbounded: a run and an exec that never stop forking.
      const bomb = api(f, 'POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: FORK_BOMB }], limits: { pids: 32, wallMs: 3000 } });
      const execBomb = exec(f, attacker, ['python3', '-c', FORK_BOMB], 3000);
      assert.equal((await api(f, 'GET', '/healthz')).status, 200, 'the server answers while bombs go off');
      await attempt(rt.runtime, async () => assert.equal((await bomb).body.verdict, 'timeout'));
      await attempt(rt.runtime, async () => {
        assert.equal((await execBomb).body.signal, 'SIGKILL');
        const after = await exec(f, attacker, ['echo', 'still here']);
        // If the sandbox died, say how: the session's status, stop reason and error.
        const why = after.status === 200 ? '' : (await api(f, 'GET', `/v1/sessions/${attacker}`)).text;
        assert.equal(after.body.stdout, 'still here\n', `exec after the bomb: ${after.status} ${after.text.slice(0, 300)} ${why}`);
      });
    });

    test('memory exhaustion ends in memory_limit, inside the sandbox only', async () => {
      const hog = await api(f, 'POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: MEMORY_HOG }], limits: { memoryMb: 64 } });
      await attempt(rt.runtime, () => assert.equal(hog.body.verdict, 'memory_limit', hog.text));
      const victim = await newSession(f);
      const r = await exec(f, victim, ['python3', '-c', MEMORY_HOG]);
      await attempt(rt.runtime, () => assert.equal(r.body.signal, 'SIGKILL', r.text));
      await api(f, 'DELETE', `/v1/sessions/${victim}`);
      assert.equal((await api(f, 'GET', '/healthz')).status, 200);
    });

    test('filling /work and /tmp ends in ENOSPC (or, for a run on the host work dir, memory_limit)', async () => {
      const filler = await newSession(f);
      const inSession = await viaExec(f, filler, DISK_FILL, { dirs: ['/work', '/tmp'], maxMb: 4 * DISK_MB });
      for (const d of ['/work', '/tmp']) {
        await attempt(rt.runtime, () => {
          assert.ok(isRefused(inSession[`fill ${d}`], ['ENOSPC']), `exec fill ${d}: ${JSON.stringify(inSession[`fill ${d}`])}`);
          const mb = inSession[`MiB written to ${d}`]!.value as number;
          assert.ok(mb >= DISK_MB / 2 && mb <= DISK_MB, `exec wrote ${mb} MiB to ${d} with a cap of ${DISK_MB}`);
        });
      }
      assert.equal((await exec(f, filler, ['sh', '-c', 'echo after > /work/after && cat /work/after'])).body.stdout, 'after\n', 'space is back once freed');
      await api(f, 'DELETE', `/v1/sessions/${filler}`);

      const tmp = await viaRun(f, DISK_FILL, { dirs: ['/tmp'], maxMb: 4 * DISK_MB });
      await attempt(rt.runtime, () => assert.ok(isRefused(tmp['fill /tmp'], ['ENOSPC']), `run fill /tmp: ${JSON.stringify(tmp['fill /tmp'])}`));
      const work = await api(f, 'POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: program(DISK_FILL, { dirs: ['/work'], maxMb: 1024 }) }], limits: { memoryMb: 128 } });
      await attempt(rt.runtime, () => {
        if (rt.runWorkDirCap === 'memory') assert.equal(work.body.verdict, 'memory_limit', work.text);
        else assert.ok(isRefused(parseResults(work.body.run.stdout)?.['fill /work'], ['ENOSPC']), work.text);
      });
    });

    test('huge file names and environments: ENAMETOOLONG and E2BIG inside, a 400 naming the field at the API', async () => {
      for (const [where, results] of [['run', await viaRun(f, HUGE_NAMES, {})], ['exec', await viaExec(f, attacker, HUGE_NAMES, {})]] as const) {
        await judge(f, where, results, (key) => {
          if (key.startsWith('file') || key.startsWith('path')) return ['ENAMETOOLONG'];
          // gVisor's execve refuses a too-large environment or argument with ENAMETOOLONG rather than Linux's E2BIG.
          return f.rt.runtime === 'gvisor' ? ['E2BIG', 'ENAMETOOLONG'] : ['E2BIG'];
        });
      }
      const big = 'x'.repeat(200_000);
      const refusals: [string, string, unknown, RegExp][] = [
        ['POST', '/v1/sessions', { template: 'esc-web', env: { HUGE: big } }, /env\.HUGE/],
        ['POST', '/v1/sessions', { template: 'esc-web', env: Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`V${i}`, 'y'.repeat(10_000)])) }, /env: .*all together/],
        ['POST', '/v1/sessions', { template: 'esc-web', env: { NUL: 'a\0b' } }, /env\.NUL.*NUL/],
        ['POST', `/v1/sessions/${attacker}/exec`, { command: ['echo', big] }, /command\[1\]/],
        ['POST', `/v1/sessions/${attacker}/exec`, { command: ['echo', ...Array.from({ length: 5000 }, () => 'z'.repeat(100))] }, /command: .*all together/],
        ['POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: 'print(1)' }], args: [big] }, /args\[0\]/],
        ['POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: 'print(1)' }, { name: 'a', content: '' }, { name: 'a/b', content: '' }] }, /files\[2\]\.name/],
      ];
      for (const [method, path, body, field] of refusals) {
        await attempt(rt.runtime, async () => {
          const r = await api(f, method, path, body);
          assert.equal(r.status, 400, `${path}: ${r.text.slice(0, 300)}`);
          assert.match(r.body.error.message, field);
        });
      }
      for (const name of ['a'.repeat(300), 'a/'.repeat(600) + 'x']) {
        await attempt(rt.runtime, async () => assert.equal((await raw(f, 'PUT', `/v1/sessions/${attacker}/files/${name}`, 'x')).status, 400));
      }
    });

    test('after every attack: the server is healthy, the bystander sandbox and its files are intact, host files unchanged', async () => {
      assert.equal((await api(f, 'GET', '/healthz')).status, 200);
      assert.equal((await api(f, 'GET', '/readyz')).status, 200);
      const b = await api(f, 'GET', `/v1/sessions/${bystander}`);
      assert.equal(b.body.status, 'ready', b.text);
      assert.equal((await raw(f, 'GET', `/v1/sessions/${bystander}/files/keep/note.txt`)).text, bystanderNote);
      assert.equal((await exec(f, bystander, ['cat', 'keep/note.txt'])).body.stdout, bystanderNote);
      const page = await fetch(`${f.base}/s/${(await f.t.kiln.sessions.live(bystander, LOCAL)).token}/`);
      assert.equal(page.status, 200, 'the bystander server still answers through the proxy');
      const ok = await api(f, 'POST', '/v1/runs', { language: 'esc-python', files: [{ name: 'main.py', content: 'print("fine")' }] });
      assert.equal(ok.body.verdict, 'ok', ok.text);
      assert.equal(ok.body.run.stdout, 'fine\n');
      for (const p of f.guarded) assert.equal(sha(p), f.hashes.get(p), `${p} changed`);
      assert.deepEqual(f.reached, []);
    });
  });
}

test('tally: every attempt was blocked', (t) => {
  let attempts = 0;
  let blocked = 0;
  for (const [runtime, c] of tally) {
    t.diagnostic(`escape suite (${runtime}): ${c.attempts} attempts, ${c.blocked} blocked`);
    attempts += c.attempts;
    blocked += c.blocked;
  }
  const line = `escape suite: ${attempts} attempts, ${blocked} blocked`;
  t.diagnostic(line);
  console.log(line);
  assert.deepEqual([...tally.keys()], RUNTIMES.map((r) => r.runtime), 'every runtime was attacked');
  assert.ok(attempts > 0);
  assert.equal(blocked, attempts);
});
