/**
 * The sandbox contract: every runtime passes the same tests. Each test makes
 * real sandboxes, always destroys them in `finally`, and the suite fails if
 * the runtime still lists a sandbox of its own at the end.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { readFileSync } from 'node:fs';
import type { ExecLimits, Runtime, Sandbox, SandboxLimits } from '../../src/runtimes/types.js';

export interface ContractOptions {
  /** The interpreter to use for small scripts inside this runtime's sandboxes. */
  python: string;
}

const SANDBOX: SandboxLimits = { cpus: 1, memoryMb: 512, pids: 128, diskMb: 64 };
export const LIMITS: ExecLimits = { wallMs: 5000, cpuMs: 5000, memoryMb: 256, pids: 64, outputBytes: 1 << 20 };

export function runtimeContract(makeRuntime: () => Runtime, opts: ContractOptions): void {
  const rt = makeRuntime();
  const py = (code: string, limits: Partial<ExecLimits> = {}, stdin?: string) => ({
    command: [opts.python, '-c', code],
    limits: { ...LIMITS, ...limits },
    stdin,
  });

  async function withSandbox<T>(fn: (sb: Sandbox) => Promise<T>, limits: Partial<SandboxLimits> = {}): Promise<T> {
    const sb = await rt.create({ template: 'contract', limits: { ...SANDBOX, ...limits }, options: (rt as { testOptions?: Record<string, unknown> }).testOptions });
    try {
      return await fn(sb);
    } finally {
      await sb.destroy();
    }
  }

  after(async () => {
    assert.deepEqual(await rt.listOwn(), [], `${rt.name}: sandboxes left behind`);
    await rt.close();
  });

  test(`${rt.name}: check() says the runtime works here`, async () => {
    const c = await rt.check();
    assert.equal(c.ok, true, `${c.detail} ${c.fix ?? ''}`);
  });

  test(`${rt.name}: runs a program with stdin, reports exit code, time and memory`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec(py('import sys; d=sys.stdin.read(); print(d.upper()); sys.exit(3)', {}, 'hello'));
      assert.equal(r.stdout.toString(), 'HELLO\n');
      assert.equal(r.exitCode, 3);
      assert.equal(r.signal, null);
      assert.equal(r.killedBy, null);
      assert.ok(r.wallMs > 0 && r.memoryKb > 0, JSON.stringify(r));
    });
  });

  test(`${rt.name}: an infinite loop ends at the wall deadline`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec({ command: ['/bin/sh', '-c', 'while :; do sleep 1; done'], limits: { ...LIMITS, wallMs: 500 } });
      assert.equal(r.killedBy, 'wall_timeout');
      assert.ok(r.wallMs >= 500 && r.wallMs < 4000, `wallMs ${r.wallMs}`);
    });
  });

  test(`${rt.name}: a program killed while it forks did not hit the pids limit (the kill's own refusals are not counted)`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec({ command: ['/bin/sh', '-c', 'while :; do /bin/true; done'], limits: { ...LIMITS, wallMs: 500 } });
      assert.equal(r.killedBy, 'wall_timeout');
      assert.equal(r.pidsLimitHit, false);
    });
  });

  test(`${rt.name}: a busy loop ends at the CPU deadline`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec(py('while True: pass', { cpuMs: 300, wallMs: 10000 }));
      assert.equal(r.killedBy, 'cpu_timeout');
      assert.ok(r.wallMs < 5000, `wallMs ${r.wallMs}`);
    });
  });

  test(`${rt.name}: allocating 1 GiB under a 64 MiB limit is an OOM kill`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec(py('x = bytearray(1 << 30); print(len(x))', { memoryMb: 64 }));
      assert.equal(r.oomKilled, true, JSON.stringify({ ...r, stdout: undefined }));
      assert.notEqual(r.exitCode, 0);
      assert.equal(r.stdout.toString(), '');
    });
  });

  test(`${rt.name}: a fork bomb is contained by the pids limit`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec({ command: ['/bin/sh', '-c', 'b() { b | b & }; b; sleep 1'], limits: { ...LIMITS, pids: 32, wallMs: 3000 } });
      // Under gVisor the limit is RLIMIT_NPROC inside the sentry, which the host's counter never sees
      // (README), and a refused bomb can die out before the deadline: the shells' refusals show it held.
      const refused = /Cannot fork|Resource temporarily unavailable/.test(r.stderr.toString());
      assert.ok(r.pidsLimitHit || r.killedBy === 'wall_timeout' || refused, JSON.stringify({ ...r, stdout: undefined, stderr: r.stderr.subarray(0, 200).toString() }));
      // How many the limit let through, counted by the forker itself: fewer than 32, then EAGAIN.
      const counted = await sb.exec(
        py('import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print(n, e.errno)\n        break\n    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\n    n += 1', { pids: 32 }),
      );
      const [n, errno] = counted.stdout.toString().trim().split(' ').map(Number);
      assert.ok(n! > 0 && n! < 32, `forks let through: ${counted.stdout.toString()} ${counted.stderr.toString().slice(0, 200)}`);
      assert.equal(errno, 11, 'EAGAIN');
      // The sandbox is still usable and nothing of the bomb survives.
      const again = await sb.exec(py('print("alive")'));
      assert.equal(again.stdout.toString(), 'alive\n');
    });
  });

  test(`${rt.name}: 100 MB of output is cut at the cap`, async () => {
    await withSandbox(async (sb) => {
      const before = process.memoryUsage().rss;
      const r = await sb.exec(py('import sys\nfor _ in range(1600): sys.stdout.write("x" * 65536)', { outputBytes: 1 << 20, wallMs: 20000 }));
      assert.equal(r.killedBy, 'output_limit');
      assert.equal(r.truncated, true);
      assert.equal(r.stdout.length, 1 << 20);
      assert.ok(process.memoryUsage().rss - before < 64 << 20, 'server memory stayed flat');
    });
  });

  test(`${rt.name}: no network: neither the host's ports nor the outside`, async () => {
    const server = createServer((s) => s.end('secret')).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const port = (server.address() as { port: number }).port;
    try {
      await withSandbox(async (sb) => {
        const code = `
import socket
for host in ["127.0.0.1", "10.0.0.1", "1.1.1.1"]:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((host, ${port} if host == "127.0.0.1" else 80)); print("connected", host)
    except OSError as e:
        print("blocked", host)
`;
        const r = await sb.exec(py(code));
        assert.equal(r.stdout.toString(), 'blocked 127.0.0.1\nblocked 10.0.0.1\nblocked 1.1.1.1\n', r.stderr.toString());
      });
    } finally {
      server.close();
    }
  });

  test(`${rt.name}: host files are out of reach and only the work dir and /tmp are writable`, async () => {
    await withSandbox(async (sb) => {
      const r = await sb.exec(
        py(`
import os
def attempt(label, fn):
    try:
        fn(); print(label, "OK")
    except OSError:
        print(label, "denied")
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("etc", lambda: open("/etc/kiln-test", "w").write("x"))
attempt("usr", lambda: open("/usr/kiln-test", "w").write("x"))
attempt("work", lambda: open("/work/ok.txt", "w").write("x"))
attempt("tmp", lambda: open("/tmp/ok.txt", "w").write("x"))
print("uid", os.getuid() != 0)
`),
      );
      assert.equal(r.stdout.toString(), 'shadow denied\netc denied\nusr denied\nwork OK\ntmp OK\nuid True\n', r.stderr.toString());
    });
  });

  test(`${rt.name}: hardened: uid 65534, no capabilities, no new privileges, a seccomp filter, no host processes, capped /tmp`, async () => {
    await withSandbox(async (sb) => {
      const code = `
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def status(pid):
    return {k: v.strip() for k, v in (l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines())}
def call(fn, *args):
    return 0 if fn(*args) >= 0 else errno.errorcode[ctypes.get_errno()]
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def fill(path, mb):
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"\\0" * (1 << 20)); f.flush()
procs = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            s = status(p); procs.append([s["Name"], s["Uid"].split()[0], s.get("Seccomp", "-"), s["CapEff"]])
        except FileNotFoundError:
            pass
me = status("self")
print(json.dumps({
    "status": [me["Uid"], me["CapEff"], me.get("NoNewPrivs", "-"), me.get("Seccomp", "-")],
    "kernel": open("/proc/version").read(),
    "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
    "unshare_user": call(libc.unshare, 0x10000000),
    "procs": procs,
    "write_usr": attempt(lambda: open("/usr/kiln-probe", "w")),
    "fill_tmp": attempt(lambda: fill("/tmp/big", ${SANDBOX.diskMb + 2})),
}))
`;
      const r = await sb.exec(py(code));
      assert.equal(r.exitCode, 0, r.stderr.toString());
      const got = JSON.parse(r.stdout.toString());
      // Under gVisor the code talks to gVisor's kernel, not the host's (which the sentry's own seccomp filter
      // guards); kiln's filter is loaded inside too, so the sentry refuses what it denies.
      const sentry = rt.name === 'gvisor';
      if (sentry) assert.notEqual(got.kernel, readFileSync('/proc/version', 'utf8'), 'gVisor stands between the code and the host kernel');
      assert.deepEqual(got.status, ['65534\t65534\t65534\t65534', '0000000000000000', sentry ? '-' : '1', sentry ? got.status[3] : '2']);
      assert.equal(got.mount, 'EPERM');
      assert.equal(got.unshare_user, 'EPERM');
      // Only the sandbox's own few processes, each without capabilities: nothing of the host's. Each runs as
      // the sandbox uid, except under gVisor the keeper and its init, root without capabilities (so that a
      // run's `kill -1` cannot end the sandbox before kiln reads the run's end).
      const procs = got.procs as [string, string, string, string][];
      assert.ok(procs.length >= 2 && procs.length <= 4, JSON.stringify(procs));
      for (const [name, uid, seccomp, capEff] of procs) {
        assert.ok(!/^(node|dockerd|containerd|systemd)/.test(name), `host process ${name} visible`);
        assert.equal(capEff, '0000000000000000', `${name} has capabilities`);
        if (!(sentry && ['docker-init', 'sleep'].includes(name))) assert.equal(uid, '65534', `${name} runs as uid ${uid}`);
        if (!sentry) assert.equal(seccomp, '2', `${name} runs without a seccomp filter`);
      }
      // gVisor checks permissions before the read-only mount: the write fails either way.
      assert.equal(got.write_usr, sentry && got.write_usr === 'EACCES' ? 'EACCES' : 'EROFS');
      assert.equal(got.fill_tmp, 'ENOSPC');
    });
  });

  test(`${rt.name}: /dev holds no device node but null, zero, random, urandom and tty, and no pseudo-terminal opens`, async () => {
    await withSandbox(async (sb) => {
      const code = `
import json, os, pty, stat
nodes = {}
for root, dirs, files in os.walk("/dev"):
    for n in dirs + files:
        p = os.path.join(root, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            nodes[p] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
def attempt(f):
    try:
        return f()
    except OSError as e:
        return e.strerror
print(json.dumps({"nodes": nodes, "pty": attempt(lambda: pty.openpty() and "opened"),
  "zero": open("/dev/zero", "rb").read(2).hex(), "urandom": len(open("/dev/urandom", "rb").read(8))}))
`;
      const r = await sb.exec(py(code));
      assert.equal(r.exitCode, 0, r.stderr.toString());
      const got = JSON.parse(r.stdout.toString());
      // By device number: a masked node (docker's /dev/full) may be a null device under another name.
      const allowed = new Set(['1:3', '1:5', '1:8', '1:9', '5:0']); // null, zero, random, urandom, tty
      for (const [path, dev] of Object.entries(got.nodes as Record<string, string>)) assert.ok(allowed.has(dev), `${path} is device ${dev}`);
      assert.ok(Object.values(got.nodes).includes('1:3'), `/dev/null is there: ${JSON.stringify(got.nodes)}`);
      assert.notEqual(got.pty, 'opened');
      assert.equal(got.zero, '0000');
      assert.equal(got.urandom, 8);
    });
  });

  test(`${rt.name}: two sandboxes see neither each other's files nor processes`, async () => {
    await withSandbox(async (a) => {
      await withSandbox(async (b) => {
        await a.putFile('mine.txt', Buffer.from('a-secret'));
        const marker = `kiln-marker-${Date.now()}`;
        const sleeper = a.exec(py(`import time; time.sleep(2) # ${marker}`, { wallMs: 5000 }));
        await new Promise((r) => setTimeout(r, 300));
        const r = await b.exec({ command: ['/bin/sh', '-c', 'ls /work; cat /work/mine.txt 2>&1 || true'], limits: LIMITS });
        assert.doesNotMatch(r.stdout.toString(), /a-secret/);
        const cmdlines = await b.exec({ command: ['/bin/sh', '-c', 'cat /proc/[0-9]*/cmdline | tr "\\0" " "'], limits: LIMITS });
        assert.doesNotMatch(cmdlines.stdout.toString(), new RegExp(marker));
        assert.equal((await sleeper).exitCode, 0, 'the marked process really ran meanwhile');
      });
    });
  });

  test(`${rt.name}: files go in and out; a planted link to a host file yields nothing of the host`, async () => {
    await withSandbox(async (sb) => {
      await sb.putFile('dir/in.txt', Buffer.from('payload'));
      assert.equal((await sb.getFile('dir/in.txt', 100))?.toString(), 'payload');
      assert.equal(await sb.getFile('absent.txt', 100), undefined);
      await sb.exec({ command: ['/bin/sh', '-c', 'ln -s /etc/shadow shadow; ln -s /etc/hostname host'], limits: LIMITS });
      const shadow = await sb.getFile('shadow', 10000).catch(() => undefined);
      assert.ok(shadow === undefined || !shadow.toString().includes('root:'), 'host /etc/shadow leaked');
      const host = await sb.getFile('host', 10000).catch(() => undefined);
      const { readFileSync } = await import('node:fs');
      if (host !== undefined) assert.notEqual(host.toString(), readFileSync('/etc/hostname', 'utf8'));
      // Writing through a planted link must not reach the host either.
      await sb.exec({ command: ['/bin/sh', '-c', 'ln -s /etc/kiln-planted planted'], limits: LIMITS });
      await sb.putFile('planted', Buffer.from('x')).catch(() => undefined);
      assert.equal((await import('node:fs')).existsSync('/etc/kiln-planted'), false);
      await assert.rejects(sb.putFile('../escape', Buffer.from('x')), /invalid|\.\./);
    });
  });

  test(`${rt.name}: destroy removes the sandbox and a crashed instance's sandboxes are reaped`, async () => {
    const sb = await rt.create({ template: 'contract', limits: SANDBOX, options: (rt as { testOptions?: Record<string, unknown> }).testOptions });
    assert.ok((await rt.listOwn()).includes(sb.id));
    await sb.destroy();
    await sb.destroy(); // idempotent
    assert.ok(!(await rt.listOwn()).includes(sb.id));
    // A second driver object for the same instance plays the restarted server.
    const crashed = makeRuntime();
    const left = await crashed.create({ template: 'contract', limits: SANDBOX, options: (rt as { testOptions?: Record<string, unknown> }).testOptions });
    const restarted = makeRuntime();
    assert.ok((await restarted.reapOrphans()) >= 1);
    assert.ok(!(await restarted.listOwn()).includes(left.id));
    await left.destroy();
    await crashed.close();
    await restarted.close();
  });
}
