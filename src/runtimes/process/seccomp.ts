/**
 * The process runtime's seccomp filter, as a classic BPF program.
 *
 * - filter  — an array of `struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}`,
 *             little-endian, run by the kernel on every syscall with a
 *             `struct seccomp_data` as input; bwrap reads it from `--seccomp FD`
 *             and the enter helper (seccomp-exec.c) from its own fd.
 * - denied  — a syscall the sandbox has no business making: it fails with EPERM
 *             (the program sees an ordinary error, nothing is killed).
 *
 * A denylist, not an allowlist: user namespaces already strip every privilege
 * from the sandbox uid, so the filter's job is to shut the kernel interfaces
 * that stay reachable from an unprivileged namespace and have a record of
 * privilege escalations (new namespaces, bpf, io_uring, userfaultfd, keyrings,
 * perf), plus what no toolchain needs. Python, gcc, rustc, java, node and bash
 * must run under it unchanged.
 */
import { createHash } from 'node:crypto';

/** Syscalls denied outright on every architecture that has them. */
const DENIED = [
  // Mounts and the new mount API: a sandbox keeps the filesystem it was given.
  'mount', 'umount2', 'pivot_root', 'chroot', 'move_mount', 'open_tree', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr',
  // Namespaces: no new ones (clone is checked by flags below), none joined.
  'unshare', 'setns',
  // Other processes' memory and files.
  'ptrace', 'process_vm_readv', 'process_vm_writev', 'kcmp', 'pidfd_getfd',
  // Kernel attack surface reachable without privileges.
  'bpf', 'userfaultfd', 'perf_event_open', 'io_uring_setup', 'io_uring_enter', 'io_uring_register',
  'keyctl', 'add_key', 'request_key', 'open_by_handle_at', 'name_to_handle_at', 'fanotify_init', 'lookup_dcookie',
  // Machine administration: the host's, never a sandbox's.
  'kexec_load', 'kexec_file_load', 'init_module', 'finit_module', 'delete_module', 'create_module', 'get_kernel_syms', 'query_module',
  'reboot', 'swapon', 'swapoff', 'settimeofday', 'clock_settime', 'clock_adjtime', 'acct', 'quotactl', 'quotactl_fd', 'nfsservctl',
  'syslog', 'vhangup', 'iopl', 'ioperm',
  // Obsolete interfaces nothing current calls.
  'uselib', 'ustat', 'sysfs', '_sysctl',
] as const;

type Denied = (typeof DENIED)[number];
type Special = 'clone' | 'clone3' | 'personality' | 'mknodat';

interface ArchTable {
  name: string;
  /** AUDIT_ARCH_* value the kernel puts in seccomp_data.arch. */
  auditArch: number;
  /** Syscall numbers; absent where the architecture lacks the call. */
  nr: Partial<Record<Denied | 'mknod', number>> & Record<Special, number>;
  /** x86_64 only: the kernel also accepts x32-ABI numbers (nr | 0x40000000) on this arch value. */
  x32Bit?: number;
}

/** From <asm/unistd_64.h> (test/unit/seccomp.test.ts compares them with the installed headers). */
const X86_64: ArchTable = {
  name: 'x86_64',
  auditArch: 0xc000003e,
  x32Bit: 0x40000000,
  nr: {
    clone: 56, clone3: 435, personality: 135, mknod: 133, mknodat: 259,
    mount: 165, umount2: 166, pivot_root: 155, chroot: 161, move_mount: 429, open_tree: 428, fsopen: 430, fsconfig: 431, fsmount: 432,
    fspick: 433, mount_setattr: 442, unshare: 272, setns: 308, ptrace: 101, process_vm_readv: 310, process_vm_writev: 311, kcmp: 312,
    pidfd_getfd: 438, bpf: 321, userfaultfd: 323, perf_event_open: 298, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
    keyctl: 250, add_key: 248, request_key: 249, open_by_handle_at: 304, name_to_handle_at: 303, fanotify_init: 300, lookup_dcookie: 212,
    kexec_load: 246, kexec_file_load: 320, init_module: 175, finit_module: 313, delete_module: 176, create_module: 174, get_kernel_syms: 177,
    query_module: 178, reboot: 169, swapon: 167, swapoff: 168, settimeofday: 164, clock_settime: 227, clock_adjtime: 305, acct: 163,
    quotactl: 179, quotactl_fd: 443, nfsservctl: 180, syslog: 103, vhangup: 153, iopl: 172, ioperm: 173, uselib: 134, ustat: 136,
    sysfs: 139, _sysctl: 156,
  },
};

/** From <asm-generic/unistd.h>, which arm64 uses (it has no iopl, uselib, ustat, sysfs, _sysctl, old module calls). */
const AARCH64: ArchTable = {
  name: 'aarch64',
  auditArch: 0xc00000b7,
  nr: {
    clone: 220, clone3: 435, personality: 92, mknodat: 33,
    mount: 40, umount2: 39, pivot_root: 41, chroot: 51, move_mount: 429, open_tree: 428, fsopen: 430, fsconfig: 431, fsmount: 432,
    fspick: 433, mount_setattr: 442, unshare: 97, setns: 268, ptrace: 117, process_vm_readv: 270, process_vm_writev: 271, kcmp: 272,
    pidfd_getfd: 438, bpf: 280, userfaultfd: 282, perf_event_open: 241, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
    keyctl: 219, add_key: 217, request_key: 218, open_by_handle_at: 265, name_to_handle_at: 264, fanotify_init: 262, lookup_dcookie: 18,
    kexec_load: 104, kexec_file_load: 294, init_module: 105, finit_module: 273, delete_module: 106, reboot: 142, swapon: 224,
    swapoff: 225, settimeofday: 170, clock_settime: 112, clock_adjtime: 266, acct: 89, quotactl: 60, quotactl_fd: 443, nfsservctl: 42,
    syslog: 116, vhangup: 58,
  },
};

export const ARCHES: readonly ArchTable[] = [X86_64, AARCH64];
export const DENIED_SYSCALLS: readonly string[] = DENIED;

/**
 * clone() flags that make a namespace. CLONE_NEWTIME (0x80) is only accepted by
 * clone3 and unshare (in clone() that bit belongs to the exit signal, where a
 * valid signal never sets it); it is in the mask so the rule reads as "no new
 * namespace of any kind".
 */
export const CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80;

/**
 * mknod's file types (mode & S_IFMT) that make a device node: character and
 * block. FIFOs, sockets and regular files stay allowed (mkfifo is ordinary).
 * Unprivileged namespaces refuse device nodes anyway; gVisor's own file
 * systems would make one, and nothing in a sandbox needs it.
 */
const S_IFMT = 0o170000;
const DEVICE_TYPES = [0o020000, 0o060000];

/** personality() values allowed: PER_LINUX (0) and the 0xffffffff query. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE … are denied. */
const PERSONALITY_ALLOWED = [0, 0xffffffff];

const EPERM = 1;
const ENOSYS = 38;
const RET_KILL_PROCESS = 0x80000000;
const RET_ERRNO = 0x00050000;
const RET_ALLOW = 0x7fff0000;

// seccomp_data offsets: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (low word first: little-endian only).
const OFF_NR = 0;
const OFF_ARCH = 4;
const OFF_ARG0_LO = 16;
const OFF_ARG1_LO = 24;
const OFF_ARG2_LO = 32;

// Classic BPF opcodes.
const LD_W_ABS = 0x20;
const ALU_AND_K = 0x54;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;

type Target = number | string; // 0 = next instruction, or a label
interface Insn {
  code: number;
  k: number;
  jt: Target;
  jf: Target;
}

/** A tiny assembler: forward jumps to labels, resolved and range-checked (u8 offsets) at the end. */
class Program {
  private readonly insns: Insn[] = [];
  private readonly labels = new Map<string, number>();

  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`seccomp: label ${name} defined twice`);
    this.labels.set(name, this.insns.length);
    return this;
  }
  load(offset: number): this {
    return this.push(LD_W_ABS, offset);
  }
  /** if (A <op> k) goto jt else goto jf */
  jump(code: number, k: number, jt: Target, jf: Target = 0): this {
    return this.push(code, k, jt, jf);
  }
  ret(k: number): this {
    return this.push(RET_K, k);
  }
  and(k: number): this {
    return this.push(ALU_AND_K, k);
  }
  private push(code: number, k: number, jt: Target = 0, jf: Target = 0): this {
    this.insns.push({ code, k: k >>> 0, jt, jf });
    return this;
  }

  assemble(): Buffer {
    const out = Buffer.alloc(this.insns.length * 8);
    this.insns.forEach((insn, i) => {
      out.writeUInt16LE(insn.code, i * 8);
      out.writeUInt8(this.offset(insn.jt, i), i * 8 + 2);
      out.writeUInt8(this.offset(insn.jf, i), i * 8 + 3);
      out.writeUInt32LE(insn.k, i * 8 + 4);
    });
    return out;
  }
  private offset(t: Target, from: number): number {
    if (typeof t === 'number') return t;
    const at = this.labels.get(t);
    if (at === undefined) throw new Error(`seccomp: jump to undefined label ${t}`);
    const off = at - from - 1;
    if (off < 0 || off > 255) throw new Error(`seccomp: jump from ${from} to ${t} is out of range (${off})`);
    return off;
  }
}

/**
 * The filter: unknown architectures (i386, arm32 compat …) kill the process;
 * then per architecture the denied syscalls return EPERM, x32 numbers return
 * EPERM, clone with a CLONE_NEW* flag returns EPERM, clone3 returns ENOSYS
 * (its flags live in memory a filter cannot read, and libc falls back to clone
 * on ENOSYS), personality other than a query returns EPERM, mknod and mknodat
 * of a device node return EPERM.
 */
export function buildSeccompFilter(): Buffer {
  const p = new Program();
  p.load(OFF_ARCH);
  for (const a of ARCHES) p.jump(JEQ_K, a.auditArch, a.name);
  p.ret(RET_KILL_PROCESS);
  for (const a of ARCHES) {
    p.label(a.name).load(OFF_NR);
    if (a.x32Bit !== undefined) p.jump(JGE_K, a.x32Bit, 'eperm');
    for (const name of DENIED) {
      const nr = a.nr[name];
      if (nr !== undefined) p.jump(JEQ_K, nr, 'eperm');
    }
    p.jump(JEQ_K, a.nr.clone, 'clone');
    p.jump(JEQ_K, a.nr.clone3, 'enosys');
    p.jump(JEQ_K, a.nr.personality, 'personality');
    p.jump(JEQ_K, a.nr.mknodat, 'mknodat');
    if (a.nr.mknod !== undefined) p.jump(JEQ_K, a.nr.mknod, 'mknod');
    p.ret(RET_ALLOW);
  }
  // clone's flags are arg0 on both x86_64 and arm64.
  p.label('clone').load(OFF_ARG0_LO).jump(JSET_K, CLONE_NEW_MASK, 'eperm').ret(RET_ALLOW);
  // personality takes an unsigned int: the low word is all of it.
  p.label('personality').load(OFF_ARG0_LO);
  for (const v of PERSONALITY_ALLOWED) p.jump(JEQ_K, v, 'allow');
  p.ret(RET_ERRNO | EPERM);
  // The mode is mknod's arg1 and mknodat's arg2.
  for (const [label, offset] of [['mknod', OFF_ARG1_LO], ['mknodat', OFF_ARG2_LO]] as const) {
    p.label(label).load(offset).and(S_IFMT);
    for (const type of DEVICE_TYPES) p.jump(JEQ_K, type, 'eperm');
    p.ret(RET_ALLOW);
  }
  p.label('allow').ret(RET_ALLOW);
  p.label('eperm').ret(RET_ERRNO | EPERM);
  p.label('enosys').ret(RET_ERRNO | ENOSYS);
  return p.assemble();
}

/** Short content hash, so a program file can be named after what it holds. */
export function filterDigest(filter: Buffer): string {
  return createHash('sha256').update(filter).digest('hex').slice(0, 16);
}
