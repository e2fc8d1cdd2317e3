import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ProcessRuntime } from '../../src/runtimes/process/driver.js';
import { Cgroup, detectCgroupMode } from '../../src/runtimes/process/cgroups.js';
import { DEFAULT_CONFIG } from '../../src/config/defaults.js';
import type { SandboxLimits } from '../../src/runtimes/types.js';
import { runtimeContract } from './contract.js';

const instanceId = `test-${randomBytes(4).toString('hex')}`;
const makeRuntime = () =>
  new ProcessRuntime({
    instanceId,
    sandboxRoot: '/run/kiln',
    uid: DEFAULT_CONFIG.runtimes.process.uid,
    gid: DEFAULT_CONFIG.runtimes.process.gid,
    systemDirs: DEFAULT_CONFIG.runtimes.process.systemDirs,
  });
runtimeContract(makeRuntime, { python: 'python3' });

// Beyond the contract: what only the process runtime offers a session's server.
const rt = makeRuntime();
const LIMITS: SandboxLimits = { cpus: 0.5, memoryMb: 256, pids: 64, diskMb: 16 };

/** The CPU cap (cores) and weight of a cgroup of this instance, on cgroup v2 or v1. */
function cpuOf(rel: string): { cap: number; weight: number } {
  const v2 = join('/sys/fs/cgroup/kiln', instanceId, rel);
  if (existsSync(join(v2, 'cpu.max'))) {
    const [quota, period] = readFileSync(join(v2, 'cpu.max'), 'utf8').trim().split(' ').map(Number);
    return { cap: quota! / period!, weight: Number(readFileSync(join(v2, 'cpu.weight'), 'utf8')) / 100 };
  }
  const v1 = join('/sys/fs/cgroup/cpu/kiln', instanceId, rel);
  const read = (f: string) => Number(readFileSync(join(v1, f), 'utf8'));
  return { cap: read('cpu.cfs_quota_us') / read('cpu.cfs_period_us'), weight: read('cpu.shares') / 1024 };
}

test('process: a server starts with its start-up CPU cap, and gets the sandbox quota once ready; weights follow reservations', async () => {
  const sb = await rt.create({ template: 'burst', limits: LIMITS, main: { command: ['sleep', '60'], startCpus: 2 } });
  try {
    assert.deepEqual(cpuOf(sb.id), { cap: 2, weight: 0.5 }, 'the burst raises the cap, never the weight');
    assert.equal(cpuOf(`${sb.id}/main`).cap, 2);
    await sb.mainReady!();
    assert.deepEqual(cpuOf(sb.id), { cap: 0.5, weight: 0.5 });
    assert.equal(cpuOf(`${sb.id}/main`).cap, 0.5);
  } finally {
    await sb.destroy();
  }
  const plain = await rt.create({ template: 'burst', limits: { ...LIMITS, cpus: 1 }, main: { command: ['sleep', '60'] } });
  try {
    assert.deepEqual(cpuOf(plain.id), { cap: 1, weight: 1 }, 'without startCpus the sandbox quota holds from the start');
  } finally {
    await plain.destroy();
  }
});

test('process: portListening sees a TCP listener inside the sandbox at an address a link reaches, and nothing else', async () => {
  // A listener on the host must not count: the look is into the sandbox's own network namespace.
  const host = createServer().listen(0, '127.0.0.1');
  await once(host, 'listening');
  const hostPort = (host.address() as AddressInfo).port;
  const server = [
    'import socket, time',
    'def listen(family, addr):',
    '    s = socket.socket(family); s.bind(addr); s.listen(); return s',
    'keep = [listen(socket.AF_INET, ("127.0.0.1", 8081)), listen(socket.AF_INET, ("0.0.0.0", 8084))]',
    'keep += [listen(socket.AF_INET6, ("::", 8085)), listen(socket.AF_INET6, ("::1", 8086)), listen(socket.AF_INET6, ("::ffff:127.0.0.1", 8087))]',
    'v6 = socket.socket(socket.AF_INET6); v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); v6.bind(("::", 8091)); v6.listen(); keep.append(v6)',
    // More listeners on one port than one read of the kernel's answer holds: none reachable on 8092, one on 8093.
    'many = lambda port: [listen(socket.AF_INET, (f"127.0.{i // 250}.{2 + i % 250}", port)) for i in range(300)]',
    'keep += many(8092) + many(8093) + [listen(socket.AF_INET, ("127.0.0.1", 8093))]',
    // An established connection on 8089 whose listener is gone, and a UDP socket on 8090: neither is a TCP listener.
    'l = listen(socket.AF_INET, ("127.0.0.1", 8089)); c = socket.create_connection(("127.0.0.1", 8089)); a, _ = l.accept(); l.close(); keep += [c, a]',
    'u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 8090)); keep.append(u)',
    'print("up", flush=True); time.sleep(60)',
  ].join('\n');
  const sb = await rt.create({ template: 'listen', limits: LIMITS, main: { command: ['python3', '-c', server] } });
  const idle = await rt.create({ template: 'listen', limits: LIMITS });
  try {
    // Bounded wait for the interpreter to set up; nothing is asserted about how long it took.
    for (let i = 0; i < 500 && !(await sb.mainLog()).includes('up'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.match(await sb.mainLog(), /up/, 'the server set up its sockets');
    assert.equal(await sb.portListening!(8081), true, '127.0.0.1');
    assert.equal(await sb.portListening!(8084), true, '0.0.0.0');
    assert.equal(await sb.portListening!(8085), true, ':: (dual-stack)');
    assert.equal(await sb.portListening!(8087), true, '::ffff:127.0.0.1');
    assert.equal(await sb.portListening!(8086), false, '::1 only: a link dials 127.0.0.1');
    assert.equal(await sb.portListening!(8091), false, ':: with IPV6_V6ONLY: 127.0.0.1 does not reach it');
    assert.equal(await sb.portListening!(8092), false, '300 listeners, none where a link reaches');
    assert.equal(await sb.portListening!(8093), true, 'the one reachable listener among 301');
    assert.equal(await sb.portListening!(8089), false, 'an established connection is not a listener');
    assert.equal(await sb.portListening!(8090), false, 'a UDP socket is not a TCP listener');
    assert.equal(await sb.portListening!(8082), false, 'no listener on 8082');
    assert.equal(await sb.portListening!(hostPort), false, "the host's listener is not the sandbox's");
    const ex = await sb.exec({ command: ['python3', '-c', 'import socket; socket.create_connection(("127.0.0.1", 8081)); print("ok")'], limits: { wallMs: 5000, cpuMs: 5000, memoryMb: 64, pids: 8, outputBytes: 100 } });
    assert.equal(ex.stdout.toString(), 'ok\n', 'the listener seen is the one inside the sandbox');
    assert.equal(await idle.portListening!(8081), false, 'a sandbox without a main listens on nothing');
  } finally {
    await sb.destroy();
    await idle.destroy();
    host.close();
  }
  assert.equal(await sb.portListening!(8081), false, 'a destroyed sandbox listens on nothing');
});

test('process: a kill seals the cgroup (pids.max 0) on cgroup v1, and the forks it refuses are not counted as the program\'s', async () => {
  const mode = detectCgroupMode()!;
  const cg = await Cgroup.create(mode, `kiln/${instanceId}/seal-test`, { memoryMb: 64, pids: 8, cpus: 0.5 });
  try {
    await cg.killAll(); // empty: on v1 this only seals it
    // A shell joins the cgroup, then forks (a command substitution always does).
    const joinThenFork = 'for f; do echo $$ > "$f"; done; x=$(echo forked); echo "[$x]"';
    const r = spawnSync('/bin/sh', ['-c', joinThenFork, 'sh', ...cg.procsFiles()], { encoding: 'utf8' });
    const eventsFile = mode === 'v2' ? join('/sys/fs/cgroup/kiln', instanceId, 'seal-test', 'pids.events') : join('/sys/fs/cgroup/pids/kiln', instanceId, 'seal-test', 'pids.events');
    const refused = Number(/^max (\d+)$/m.exec(readFileSync(eventsFile, 'utf8'))?.[1]);
    if (mode === 'v1') {
      assert.doesNotMatch(r.stdout, /\[forked\]/, 'the fork was refused');
      assert.ok(refused >= 1, `pids.events counted the refusal (${refused})`);
    }
    assert.equal((await cg.usage()).pidsMaxHits, 0, 'usage() reports the count from before the seal');
  } finally {
    await cg.remove();
  }
});

test('process: a fork bomb that hit its pids limit before the kill still reports it', async () => {
  const sb = await rt.create({ template: 'bomb', limits: LIMITS });
  try {
    const r = await sb.exec({ command: ['/bin/sh', '-c', 'b() { b | b & }; b; sleep 100'], limits: { wallMs: 2000, cpuMs: 10000, memoryMb: 128, pids: 32, outputBytes: 1 << 16 } });
    assert.equal(r.killedBy, 'wall_timeout');
    assert.equal(r.pidsLimitHit, true);
  } finally {
    await sb.destroy();
  }
});

test('process: an exec still running when its sandbox is destroyed does not report the kill\'s refused forks as its own', async () => {
  const sb = await rt.create({ template: 'busy', limits: LIMITS });
  const running = sb.exec({ command: ['/bin/sh', '-c', 'echo go; while :; do /bin/true; done'], limits: { wallMs: 30000, cpuMs: 30000, memoryMb: 64, pids: 32, outputBytes: 1 << 16 } });
  await new Promise((r) => setTimeout(r, 500));
  await sb.destroy();
  const r = await running;
  assert.equal(r.pidsLimitHit, false);
});

test('process: an exec ends at its wall deadline even when its output pipe is held open by the sandbox\'s server', { timeout: 30000 }, async () => {
  // The server takes whatever fd an exec sends it over a unix socket and keeps it: a pipe kiln reads to its end
  // that no kill of the exec's cgroup closes.
  const server = [
    'import socket, time',
    's = socket.socket(socket.AF_UNIX); s.bind("/tmp/hold"); s.listen()',
    'kept = []',
    'while True:',
    '    c, _ = s.accept()',
    '    kept.append((c, socket.recv_fds(c, 1, 4)))',
  ].join('\n');
  const sb = await rt.create({ template: 'hold', limits: LIMITS, main: { command: ['python3', '-c', server] } });
  try {
    const give = 'import os, socket, time\nwhile not os.path.exists("/tmp/hold"): time.sleep(0.02)\ns = socket.socket(socket.AF_UNIX); s.connect("/tmp/hold")\nsocket.send_fds(s, [b"x"], [1, 2]); print("sent", flush=True)';
    const t0 = performance.now();
    const r = await sb.exec({ command: ['python3', '-c', give], limits: { wallMs: 2000, cpuMs: 2000, memoryMb: 64, pids: 8, outputBytes: 1000 } });
    const ms = performance.now() - t0;
    assert.equal(r.stdout.toString(), 'sent\n');
    assert.equal(r.killedBy, 'wall_timeout');
    assert.ok(ms < 10000, `the exec returned after ${ms.toFixed(0)} ms`);
    // The sandbox goes on: the next exec runs as usual.
    const next = await sb.exec({ command: ['echo', 'next'], limits: { wallMs: 5000, cpuMs: 5000, memoryMb: 64, pids: 8, outputBytes: 100 } });
    assert.equal(next.stdout.toString(), 'next\n');
  } finally {
    await sb.destroy();
  }
});
