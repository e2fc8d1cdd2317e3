/**
 * The attacks of the escape suite, as small python3 programs run inside a
 * sandbox. Each program receives its context as JSON, tries things that must
 * fail and prints one line: `KILN-RESULT {key: outcome}`. An outcome is
 * `{ok: true, value}` when the attempt worked, `{ok: false, errno}` when the
 * kernel refused it (errno by name; `TIMEOUT` when a connect hung instead).
 * The test decides, per key, which refusals count as blocked.
 */

export interface Outcome {
  ok: boolean;
  value?: unknown;
  errno?: string;
  error?: string;
}

export type Results = Record<string, Outcome>;

/** Shared by every attack: `attempt(key, fn)`, raw syscalls through libc, and the result line. */
const PRELUDE = String.raw`
import ctypes, errno, json, os, platform, signal, socket, subprocess, sys
R = {}
def attempt(key, fn):
    try:
        v = fn()
        R[key] = {'ok': True, 'value': v if isinstance(v, (int, str, bool, list, dict, type(None))) else str(v)}
    except socket.timeout:
        R[key] = {'ok': False, 'errno': 'TIMEOUT'}
    except OSError as e:
        R[key] = {'ok': False, 'errno': errno.errorcode.get(e.errno, str(e.errno))}
    except Exception as e:
        R[key] = {'ok': False, 'error': type(e).__name__ + ': ' + str(e)}
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    r = fn(*args)
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
NR = {'x86_64': {'init_module': 175, 'finit_module': 313, 'reboot': 169, 'ptrace': 101},
      'aarch64': {'init_module': 105, 'finit_module': 273, 'reboot': 142, 'ptrace': 117}}[platform.machine()]
def syscall(name, *args):
    return call(libc.syscall, ctypes.c_long(NR[name]), *args)
def finish():
    print('KILN-RESULT ' + json.dumps(R), flush=True)
`;

/** A complete program: prelude, the context as `CTX`, the attack, the result line. */
export function program(attack: string, ctx: unknown): string {
  return `${PRELUDE}\nCTX = json.loads(${JSON.stringify(JSON.stringify(ctx))})\n${attack}\nfinish()\n`;
}

/** Read the host's secrets: the data dir (store, instance id, token file), the config, /etc/shadow. */
export const READ_SECRETS = String.raw`
for p in CTX['files']:
    attempt('read ' + p, lambda p=p: open(p, 'rb').read(64).hex())
    attempt('read via /proc/1/root ' + p, lambda p=p: open('/proc/1/root' + p, 'rb').read(64).hex())
for d in CTX['dirs']:
    attempt('list ' + d, lambda d=d: os.listdir(d))
attempt('write into the data dir', lambda: open(CTX['dataDir'] + '/planted', 'w').write('x'))
attempt('write /etc/passwd', lambda: open('/etc/passwd', 'a').write('evil::0:0::/:/bin/sh\n'))
attempt('write /usr/bin', lambda: open('/usr/bin/kiln-planted', 'w').write('x'))
def control():
    with open('/tmp/control', 'w') as f: f.write('mine')
    return open('/tmp/control').read()
attempt('control: own file', control)
`;

/** See, signal and trace processes of the host. */
export const HOST_PROCESSES = String.raw`
PTRACE_ATTACH = 16
visible = {}
for p in os.listdir('/proc'):
    if p.isdigit():
        try: visible[p] = open('/proc/%s/cmdline' % p, 'rb').read().replace(b'\0', b' ').decode(errors='replace')
        except OSError: pass
R['visible'] = {'ok': True, 'value': visible}
for hp in CTX['hostPids']:
    if str(hp) in visible: continue  # the same number names one of our own processes: no host process to aim at
    attempt('signal host pid %d' % hp, lambda hp=hp: os.kill(hp, signal.SIGTERM))
    attempt('ptrace host pid %d' % hp, lambda hp=hp: syscall('ptrace', ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(hp), None, None))
    attempt('read /proc of host pid %d' % hp, lambda hp=hp: open('/proc/%d/environ' % hp, 'rb').read(64).hex())
if CTX.get('killAll'):
    attempt('kill -1 (everything it can see)', lambda: os.kill(-1, signal.SIGKILL))
attempt('control: signal itself', lambda: os.kill(os.getpid(), 0))
`;

/** Reach the API, a host listener on every local address, an abstract unix socket, the Docker socket, the world. */
export const NETWORK = String.raw`
routes = [l for l in open('/proc/net/route').read().splitlines()[1:] if l.strip()]
R['ipv4 routes'] = {'ok': True, 'value': routes}
routes6 = []
if os.path.exists('/proc/net/ipv6_route'):
    routes6 = [l for l in open('/proc/net/ipv6_route').read().splitlines() if l.strip() and not l.split()[-1] == 'lo']
R['ipv6 routes off lo'] = {'ok': True, 'value': routes6}
R['interfaces'] = {'ok': True, 'value': sorted(n for _, n in socket.if_nameindex())}
def tcp(addr, port):
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect((addr, port))
        return 'connected'
    finally:
        s.close()
for addr in CTX['hostAddrs']:
    for port in CTX['ports']:
        attempt('tcp %s port %d' % (addr, port), lambda a=addr, p=port: tcp(a, p))
def udp(addr, port):
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
    try: return s.sendto(b'kiln-escape', (addr, port))
    finally: s.close()
for addr in CTX['hostAddrs']:
    if not addr.startswith('127.') and addr != '::1':
        attempt('udp %s port %d' % (addr, CTX['ports'][0]), lambda a=addr: udp(a, CTX['ports'][0]))
# The world only when nothing can leave: with no route a connect fails at once, no packet is sent.
if not routes:
    for addr in CTX['worldAddrs']:
        attempt('tcp world %s' % addr, lambda a=addr: tcp(a, 80))
def unix(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return 'connected'
    finally:
        s.close()
attempt('abstract unix socket of the host', lambda: unix('\0' + CTX['abstractName']))
attempt('unix /var/run/docker.sock', lambda: unix('/var/run/docker.sock'))
attempt('unix /run/docker.sock', lambda: unix('/run/docker.sock'))
def control():
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
    return tcp('127.0.0.1', srv.getsockname()[1])
attempt('control: own loopback', control)
`;

/** What only a privileged process may do. */
export const PRIVILEGED = String.raw`
CLONE = {'user': 0x10000000, 'mnt': 0x00020000, 'net': 0x40000000, 'pid': 0x20000000, 'cgroup': 0x02000000}
attempt('mount tmpfs', lambda: call(libc.mount, b'none', b'/tmp', b'tmpfs', ctypes.c_ulong(0), None))
attempt('umount /work', lambda: call(libc.umount2, b'/work', 2))
for name, flag in CLONE.items():
    attempt('unshare ' + name, lambda flag=flag: call(libc.unshare, flag))
attempt('init_module', lambda: syscall('init_module', b'\0' * 64, ctypes.c_ulong(64), b''))
fd = os.open('/tmp', os.O_RDONLY)
attempt('finit_module', lambda: syscall('finit_module', fd, b'', 0))
attempt('raw socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).fileno())
attempt('packet socket', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).fileno())
attempt('setuid 0', lambda: os.setuid(0))
attempt('chroot', lambda: os.chroot('/tmp'))
attempt('mknod a block device', lambda: os.mknod('/tmp/disk', 0o600 | 0o060000, os.makedev(8, 0)))
attempt('write /proc/sysrq-trigger', lambda: open('/proc/sysrq-trigger', 'w').write('h'))
attempt('write core_pattern', lambda: open('/proc/sys/kernel/core_pattern', 'w').write('|/tmp/x'))
# LINUX_REBOOT_CMD_CAD_OFF: harmless even where allowed, refused without CAP_SYS_BOOT.
attempt('reboot', lambda: syscall('reboot', ctypes.c_long(0xfee1dead), ctypes.c_long(672274793), ctypes.c_long(0), None))
attempt('sethostname', lambda: call(libc.sethostname, b'pwned', 5))
attempt('hard link to /etc/passwd', lambda: os.link('/etc/passwd', '/tmp/passwd'))
attempt('control: uid', lambda: os.getuid())
`;

/** Fork until the pids limit refuses, then clean up: the count is below the limit, the error EAGAIN. */
export const COUNTED_FORKS = String.raw`
import time
kids = []
def forks():
    while len(kids) < 100000:
        pid = os.fork()
        if pid == 0:
            # A small process, not a copy of Python: the pids limit must stop the forks, not the memory limit.
            try: os.execv('/bin/sleep', ['sleep', '60'])
            finally: os._exit(0)
        kids.append(pid)
attempt('fork until refused', forks)
R['forked'] = {'ok': True, 'value': len(kids)}
for k in kids: os.kill(k, signal.SIGKILL)
for k in kids: os.waitpid(k, 0)
`;

/** A fork bomb that never gives up: only the deadline ends it. */
export const FORK_BOMB = String.raw`
import os, time
while True:
    try: os.fork()
    except OSError: time.sleep(0.01)
`;

/** Hold ever more memory. */
export const MEMORY_HOG = String.raw`
hog = []
while True: hog.append(bytearray(1 << 20))
`;

/** Fill each dir in CTX['dirs'] until the kernel refuses, then free the space. */
export const DISK_FILL = String.raw`
for d in CTX['dirs']:
    written = [0]
    def fill(d=d):
        with open(d + '/fill', 'wb') as f:
            while written[0] < CTX['maxMb']:
                f.write(b'x' * (1 << 20)); f.flush(); written[0] += 1
    attempt('fill ' + d, fill)
    R['MiB written to ' + d] = {'ok': True, 'value': written[0]}
    try: os.unlink(d + '/fill')
    except OSError: pass
`;

/** Names longer than the kernel takes, and an environment larger than exec takes. */
export const HUGE_NAMES = String.raw`
attempt('file name of 300 bytes', lambda: open('/work/' + 'a' * 300, 'w').close())
attempt('path of 6000 bytes', lambda: open('/work/' + 'a/' * 3000 + 'x', 'w').close())
attempt('environment of 1 MiB', lambda: subprocess.run(['/bin/true'], env={'HUGE': 'x' * (1 << 20)}).returncode)
attempt('argument of 1 MiB', lambda: subprocess.run(['/bin/true', 'x' * (1 << 20)]).returncode)
attempt('control: a long but legal name', lambda: open('/tmp/' + 'b' * 200, 'w').close())
`;

/** Parse the result line of an attack; undefined when there is none. */
export function parseResults(stdout: string): Results | undefined {
  const line = stdout.split('\n').find((l) => l.startsWith('KILN-RESULT '));
  return line ? (JSON.parse(line.slice('KILN-RESULT '.length)) as Results) : undefined;
}
