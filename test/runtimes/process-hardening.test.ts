/**
 * Hardening of the process runtime, seen from inside real sandboxes: the
 * seccomp filter (probed by a C program compiled with gcc in the sandbox), the
 * uid, capabilities and no-new-privileges, /dev, /proc, read-only system dirs
 * and size-capped tmpfs. Each check runs twice: in a plain sandbox (every exec
 * a fresh bwrap) and as an exec entering a sandbox with a main process (the
 * nsenter path sessions use).
 *
 * Many probes would succeed without the filter (ptrace(TRACEME), keyctl,
 * add_key, io_uring_setup, personality, kcmp, process_vm_readv, clone3,
 * userfaultfd with UFFD_USER_MODE_ONLY) or fail with another errno
 * (unshare(CLONE_NEWUSER) gives ENOSPC under bwrap's --disable-userns):
 * expecting exactly EPERM or ENOSYS is what shows the filter at work.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { ProcessRuntime } from '../../src/runtimes/process/driver.js';
import { DEFAULT_CONFIG } from '../../src/config/defaults.js';
import type { ExecLimits, Sandbox } from '../../src/runtimes/types.js';

const rt = new ProcessRuntime({
  instanceId: `test-${randomBytes(4).toString('hex')}`,
  sandboxRoot: '/run/kiln',
  uid: DEFAULT_CONFIG.runtimes.process.uid,
  gid: DEFAULT_CONFIG.runtimes.process.gid,
  systemDirs: DEFAULT_CONFIG.runtimes.process.systemDirs,
});
const DISK_MB = 8;
const LIMITS: ExecLimits = { wallMs: 30000, cpuMs: 30000, memoryMb: 256, pids: 64, outputBytes: 1 << 20 };

after(async () => {
  assert.deepEqual(await rt.listOwn(), [], 'sandboxes left behind');
  await rt.close();
});

/** Each probe prints "<name> <errno>" (0 when the call succeeded). */
const PROBE_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long r, int err) { printf("%s %d\n", name, r < 0 ? err : 0); fflush(stdout); }
#define TRY(name, call) do { errno = 0; long r_ = (long)(call); report(name, r_, errno); } while (0)

/* A raw clone that, should the kernel allow it, leaves the child no time to do anything. */
static long try_clone(unsigned long flags) {
  long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  if (r == 0) _exit(0);
  if (r > 0) { waitpid((pid_t)r, 0, 0); return 0; }
  return r;
}

static long try_clone3(void) {
  uint64_t args[11] = {0};
  args[4] = SIGCHLD; /* exit_signal */
  long r = syscall(SYS_clone3, args, sizeof args);
  if (r == 0) _exit(0);
  if (r > 0) { waitpid((pid_t)r, 0, 0); return 0; }
  return r;
}

int main(void) {
  TRY("mount", mount("none", "/tmp", "tmpfs", 0, 0));
  TRY("umount2", umount2("/tmp", MNT_DETACH));
  TRY("unshare_user", unshare(CLONE_NEWUSER));
  TRY("unshare_net", unshare(CLONE_NEWNET));
  TRY("unshare_mnt", unshare(CLONE_NEWNS));
  TRY("setns", setns(open("/proc/self/ns/uts", O_RDONLY), 0));
  TRY("clone_newuser", try_clone(CLONE_NEWUSER));
  TRY("clone_newpid", try_clone(CLONE_NEWPID));
  TRY("clone_newnet", try_clone(CLONE_NEWNET));
  TRY("clone_fork", try_clone(0));
  TRY("clone3", try_clone3());
  TRY("ptrace", ptrace(PTRACE_TRACEME, 0, 0, 0));
  char a[8] = "kiln", b[8];
  struct iovec local = { b, sizeof b }, remote = { a, sizeof a };
  TRY("process_vm_readv", process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
  TRY("kcmp", syscall(SYS_kcmp, getpid(), getpid(), 0, 0, 0));
  char attr[128] = {0};
  TRY("bpf", syscall(SYS_bpf, 0, attr, sizeof attr));
  TRY("keyctl", syscall(SYS_keyctl, 0, -3, 0)); /* KEYCTL_GET_KEYRING_ID of the session keyring */
  TRY("add_key", syscall(SYS_add_key, "user", "kiln", "x", 1, -2));
  TRY("request_key", syscall(SYS_request_key, "user", "kiln-absent", 0, 0));
  TRY("userfaultfd", syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */ | O_CLOEXEC));
  struct perf_event_attr pe;
  memset(&pe, 0, sizeof pe);
  pe.size = sizeof pe;
  pe.type = PERF_TYPE_SOFTWARE;
  pe.config = PERF_COUNT_SW_CPU_CLOCK;
  pe.exclude_kernel = 1;
  pe.exclude_hv = 1;
  TRY("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
  char params[120] = {0};
  TRY("io_uring_setup", syscall(SYS_io_uring_setup, 4, params));
  TRY("personality_query", personality(0xffffffff));
  TRY("personality_rie", personality(READ_IMPLIES_EXEC));
  struct { unsigned int bytes; int type; unsigned char h[128]; } fh = { 128, 0, {0} };
  int mount_id;
  TRY("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/tmp", &fh, &mount_id, 0));
  TRY("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
  TRY("chroot", chroot("/"));
#ifdef __x86_64__
  TRY("x32_getpid", syscall(0x40000000 | 39));
#endif
  TRY("getpid", getpid());
  return 0;
}
`;

const EPERM = constants.errno.EPERM;
const EXPECTED: Record<string, number> = {
  mount: EPERM, umount2: EPERM, unshare_user: EPERM, unshare_net: EPERM, unshare_mnt: EPERM, setns: EPERM,
  clone_newuser: EPERM, clone_newpid: EPERM, clone_newnet: EPERM, clone_fork: 0, clone3: constants.errno.ENOSYS,
  ptrace: EPERM, process_vm_readv: EPERM, kcmp: EPERM, bpf: EPERM, keyctl: EPERM, add_key: EPERM, request_key: EPERM,
  userfaultfd: EPERM, perf_event_open: EPERM, io_uring_setup: EPERM, personality_query: 0, personality_rie: EPERM,
  name_to_handle_at: EPERM, fsopen: EPERM, chroot: EPERM,
  ...(process.arch === 'x64' ? { x32_getpid: EPERM } : {}),
  getpid: 0,
};

/** What a sandboxed process can see and do, as JSON. */
const INSPECT_PY = String.raw`
import errno, json, os, sys
def status(pid):
    lines = open(f"/proc/{pid}/status").read().splitlines()
    return {k: v.strip() for k, v in (l.split(":", 1) for l in lines)}
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def fill(path, mb):
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"\0" * (1 << 20)); f.flush()
mine = status("self")
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            s = status(p); procs[p] = [s["Name"], s["Seccomp"]]
        except FileNotFoundError:
            pass
mb = int(sys.argv[1])
print(json.dumps({
    "status": {k: mine[k] for k in ["Uid", "Gid", "CapEff", "CapPrm", "CapAmb", "NoNewPrivs", "Seccomp"]},
    "dev": sorted(os.listdir("/dev")),
    "procs": procs,
    "write_usr": attempt(lambda: open("/usr/kiln-probe", "w")),
    "write_etc": attempt(lambda: open("/etc/kiln-probe", "w")),
    "write_root": attempt(lambda: open("/kiln-probe", "w")),
    "write_dev": attempt(lambda: open("/dev/kiln-probe", "w")),
    "dev_null": attempt(lambda: open("/dev/null", "w").write("x")),
    "fill_tmp": attempt(lambda: fill("/tmp/big", mb + 2)),
    "fill_shm": attempt(lambda: fill("/dev/shm/big", mb + 2)),
}))
`;

async function withSandbox(main: boolean, fn: (sb: Sandbox) => Promise<void>): Promise<void> {
  const sb = await rt.create({
    template: 'hardening',
    limits: { cpus: 1, memoryMb: 512, pids: 128, diskMb: DISK_MB },
    main: main ? { command: ['sleep', '600'] } : undefined,
  });
  try {
    await fn(sb);
  } finally {
    await sb.destroy();
  }
}

async function execOk(sb: Sandbox, command: string[]): Promise<string> {
  const r = await sb.exec({ command, limits: LIMITS });
  assert.equal(r.exitCode, 0, `${command.join(' ')}: exit ${r.exitCode} ${r.signal ?? ''}\n${r.stderr.toString()}`);
  return r.stdout.toString();
}

for (const main of [false, true]) {
  const where = main ? 'an exec entering a sandbox with a main process' : 'a fresh sandbox';

  test(`process hardening, ${where}: the seccomp filter denies what it should; gcc and the program still work`, async () => {
    await withSandbox(main, async (sb) => {
      await sb.putFile('probe.c', Buffer.from(PROBE_C));
      await execOk(sb, ['gcc', '-O1', '-Wall', '-o', 'probe', 'probe.c']);
      const got = Object.fromEntries(
        (await execOk(sb, ['./probe']))
          .trim()
          .split('\n')
          .map((l) => [l.split(' ')[0]!, Number(l.split(' ')[1])]),
      );
      assert.deepEqual(got, EXPECTED);
    });
  });

  test(`process hardening, ${where}: uid, capabilities, no-new-privileges, /dev, /proc, read-only system dirs, capped tmpfs`, async () => {
    await withSandbox(main, async (sb) => {
      const r = JSON.parse(await execOk(sb, ['python3', '-c', INSPECT_PY, String(DISK_MB)]));
      assert.deepEqual(r.status, {
        Uid: '65534\t65534\t65534\t65534',
        Gid: '65534\t65534\t65534\t65534',
        CapEff: '0000000000000000',
        CapPrm: '0000000000000000',
        CapAmb: '0000000000000000',
        NoNewPrivs: '1',
        Seccomp: '2',
      });
      assert.deepEqual(r.dev, ['fd', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']);
      // Only the sandbox's own processes: bwrap's init, the main process if any, this python; each filtered.
      const procs = Object.values(r.procs as Record<string, [string, string]>);
      assert.deepEqual(procs.map(([name]) => name).sort(), main ? ['bwrap', 'python3', 'sleep'] : ['bwrap', 'python3']);
      for (const [name, seccomp] of procs) assert.equal(seccomp, '2', `${name} runs without the filter`);
      assert.equal(r.write_usr, 'EROFS');
      assert.equal(r.write_etc, 'EROFS');
      assert.equal(r.write_root, 'EROFS');
      assert.equal(r.write_dev, 'EROFS');
      assert.equal(r.dev_null, 'ok');
      assert.equal(r.fill_tmp, 'ENOSPC');
      assert.equal(r.fill_shm, 'ENOSPC');
    });
  });
}

test('process hardening: threads, subprocesses and POSIX semaphores work under the filter', async () => {
  await withSandbox(false, async (sb) => {
    const code = [
      'import multiprocessing, subprocess, threading',
      'out = []',
      't = threading.Thread(target=lambda: out.append("thread")); t.start(); t.join()',
      'lock = multiprocessing.Lock()', // a semaphore in /dev/shm
      'with lock: out.append("lock")',
      'out.append(subprocess.run(["sh", "-c", "echo sub"], capture_output=True, text=True).stdout.strip())',
      'print(" ".join(out))',
    ].join('\n');
    assert.equal(await execOk(sb, ['python3', '-c', code]), 'thread lock sub\n');
  });
});

test('process hardening: an exec right after a main process starts enters the finished sandbox', async () => {
  // bwrap reports the main's pid before it has built the root; entering then would show the host's files
  // (or fail). The window is a few ms wide: without the wait for bwrap's fork, some of 20 tries fall in it.
  for (let i = 0; i < 20; i++) {
    await withSandbox(true, async (sb) => {
      const out = await execOk(sb, ['/bin/sh', '-c', 'ls -d /home /root /var /work 2>/dev/null; grep Seccomp: /proc/self/status']);
      assert.equal(out, '/work\nSeccomp:\t2\n');
    });
  }
});

test('process hardening: without the seccomp helper an exec beside a main process is refused, never run unfiltered', async () => {
  const broken = new ProcessRuntime({
    instanceId: `test-${randomBytes(4).toString('hex')}`,
    sandboxRoot: '/run/kiln',
    uid: DEFAULT_CONFIG.runtimes.process.uid,
    gid: DEFAULT_CONFIG.runtimes.process.gid,
    systemDirs: DEFAULT_CONFIG.runtimes.process.systemDirs,
    seccompHelper: '/nonexistent/kiln-seccomp-exec',
  });
  try {
    const check = await broken.check();
    assert.equal(check.ok, false);
    assert.match(check.fix ?? '', /\/nonexistent\/kiln-seccomp-exec is missing.*scripts\/setup/);
    const sb = await broken.create({ template: 'hardening', limits: { cpus: 1, memoryMb: 256, pids: 64, diskMb: DISK_MB }, main: { command: ['sleep', '600'] } });
    try {
      await assert.rejects(sb.exec({ command: ['true'], limits: LIMITS }), /seccomp helper \/nonexistent\/kiln-seccomp-exec is missing/);
    } finally {
      await sb.destroy();
    }
  } finally {
    assert.deepEqual(await broken.listOwn(), []);
    await broken.close();
  }
});

test('process hardening: an fd kiln inherited without close-on-exec reaches no sandbox, plain or entered, nor its main process', () => {
  // A kiln whose fd 100 came from its parent without close-on-exec (a shell, a supervisor): bwrap passes
  // on whatever fds it is given, so only the spawn can keep it out.
  const src = (p: string) => JSON.stringify(new URL(`../../src/${p}`, import.meta.url).href);
  const script = `
    import { randomBytes } from 'node:crypto';
    import { readFileSync } from 'node:fs';
    import { ProcessRuntime } from ${src('runtimes/process/driver.ts')};
    import { DEFAULT_CONFIG } from ${src('config/defaults.ts')};
    const flags = /flags:\\s*(\\d+)/.exec(readFileSync('/proc/self/fdinfo/100', 'utf8'))[1];
    const p = DEFAULT_CONFIG.runtimes.process;
    const rt = new ProcessRuntime({ instanceId: 'test-' + randomBytes(4).toString('hex'), sandboxRoot: '/run/kiln', uid: p.uid, gid: p.gid, systemDirs: p.systemDirs });
    const limits = { cpus: 1, memoryMb: 256, pids: 64, diskMb: 8 };
    const execLimits = { wallMs: 30000, cpuMs: 30000, memoryMb: 256, pids: 64, outputBytes: 1 << 20 };
    const ls = async (sb, command) => (await sb.exec({ command, limits: execLimits })).stdout.toString();
    const plain = await rt.create({ template: 'fds', limits });
    const fromPlain = await ls(plain, ['/bin/ls', '/proc/self/fd']);
    await plain.destroy();
    const served = await rt.create({ template: 'fds', limits, main: { command: ['/bin/sh', '-c', 'ls /proc/self/fd > /tmp/main-fds; exec sleep 600'] } });
    const fromEntered = await ls(served, ['/bin/ls', '/proc/self/fd']);
    const fromMain = await ls(served, ['/bin/cat', '/tmp/main-fds']);
    await served.destroy();
    await rt.close();
    process.stdout.write(JSON.stringify({ flags, fromPlain, fromEntered, fromMain }));
  `;
  const r = spawnSync('/bin/bash', ['-c', 'exec "$0" --import tsx --input-type=module -e "$1" 100</dev/null', process.execPath, script], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, string>;
  assert.equal(parseInt(out.flags!, 8) & 0o2000000, 0, "the test's own fd 100 should lack close-on-exec");
  // 0-2, and the fd ls opened to list the directory.
  for (const where of ['fromPlain', 'fromEntered', 'fromMain']) assert.deepEqual(out[where]!.trim().split('\n').map(Number), [0, 1, 2, 3], `${where}: ${out[where]}`);
});
