/**
 * The seccomp filter generator, checked two ways without a kernel: its syscall
 * numbers against the installed kernel headers, and its verdicts by running
 * the program in a small classic-BPF interpreter. (test/runtimes/process-
 * hardening.test.ts checks the same filter in the real kernel.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { ARCHES, buildSeccompFilter, CLONE_NEW_MASK, DENIED_SYSCALLS } from '../../src/runtimes/process/seccomp.js';

const ALLOW = 0x7fff0000;
const KILL_PROCESS = 0x80000000;
const EPERM = 0x00050000 | 1;
const ENOSYS = 0x00050000 | 38;

const filter = buildSeccompFilter();

/** Runs a classic BPF program over one struct seccomp_data (only the opcodes kiln's filter uses: ld abs, and k, jumps, ret k). */
function evaluate(prog: Buffer, data: { nr: number; arch: number; args?: number[] }): number {
  const input = Buffer.alloc(64);
  input.writeInt32LE(data.nr, 0);
  input.writeUInt32LE(data.arch >>> 0, 4);
  (data.args ?? []).forEach((a, i) => input.writeBigUInt64LE(BigInt(a), 16 + 8 * i));
  let acc = 0;
  for (let pc = 0; pc < prog.length / 8; pc++) {
    const code = prog.readUInt16LE(pc * 8);
    const jt = prog.readUInt8(pc * 8 + 2);
    const jf = prog.readUInt8(pc * 8 + 3);
    const k = prog.readUInt32LE(pc * 8 + 4);
    switch (code) {
      case 0x20: // ld [k]
        acc = input.readUInt32LE(k);
        break;
      case 0x54: // and #k
        acc = (acc & k) >>> 0;
        break;
      case 0x15: // jeq #k
        pc += acc === k ? jt : jf;
        break;
      case 0x35: // jge #k
        pc += acc >= k ? jt : jf;
        break;
      case 0x45: // jset #k
        pc += (acc & k) !== 0 ? jt : jf;
        break;
      case 0x06: // ret #k
        return k;
      default:
        throw new Error(`unexpected opcode 0x${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('the program ran off its end');
}

/** `#define __NR_<name> <n>` lines of a kernel header. */
function headerNumbers(path: string, prefix: RegExp): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of readFileSync(path, 'utf8').matchAll(new RegExp(`^#define ${prefix.source}(\\w+)\\s+(\\d+)\\s*$`, 'gm'))) out.set(m[1]!, Number(m[2]));
  return out;
}

test('seccomp: syscall numbers match the installed kernel headers (linux-libc-dev)', () => {
  const headers: Record<string, Map<string, number>> = {
    x86_64: headerNumbers('/usr/include/x86_64-linux-gnu/asm/unistd_64.h', /__NR_/),
    aarch64: headerNumbers('/usr/include/asm-generic/unistd.h', /__NR(?:3264)?_/),
  };
  for (const a of ARCHES) {
    const h = headers[a.name]!;
    for (const [name, nr] of Object.entries(a.nr)) assert.equal(nr, h.get(name), `${a.name} ${name}`);
    // A call the header has but the table lacks would be silently allowed.
    for (const name of DENIED_SYSCALLS) {
      if (h.has(name)) assert.ok(name in a.nr, `${a.name}: ${name} is in the headers but not in the table`);
    }
  }
});

test('seccomp: the program is whole instructions, at most the kernel limit, and deterministic', () => {
  assert.equal(filter.length % 8, 0);
  assert.ok(filter.length / 8 <= 4096);
  assert.deepEqual(buildSeccompFilter(), filter);
});

for (const a of ARCHES) {
  const nr = a.nr as Record<string, number | undefined>;
  const run = (n: number, args: number[] = []) => evaluate(filter, { nr: n, arch: a.auditArch, args });

  test(`seccomp ${a.name}: every denied syscall is EPERM; clone3 is ENOSYS`, () => {
    for (const name of DENIED_SYSCALLS) {
      if (nr[name] !== undefined) assert.equal(run(nr[name]!), EPERM, name);
    }
    assert.equal(run(a.nr.clone3), ENOSYS);
  });

  test(`seccomp ${a.name}: clone is allowed for threads and forks, EPERM with any CLONE_NEW* flag`, () => {
    const THREAD = 0x3d0f00; // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID (glibc pthread_create)
    const FORK = 0x01200011; // CLONE_CHILD_SETTID|CHILD_CLEARTID|SIGCHLD (glibc fork)
    assert.equal(run(a.nr.clone, [THREAD]), ALLOW);
    assert.equal(run(a.nr.clone, [FORK]), ALLOW);
    for (let bit = 0; bit < 32; bit++) {
      const flag = 2 ** bit;
      if ((CLONE_NEW_MASK & flag) !== 0) assert.equal(run(a.nr.clone, [FORK | flag]), EPERM, `flag 0x${flag.toString(16)}`);
    }
  });

  test(`seccomp ${a.name}: personality only as PER_LINUX or a query`, () => {
    assert.equal(run(a.nr.personality, [0]), ALLOW);
    assert.equal(run(a.nr.personality, [0xffffffff]), ALLOW);
    assert.equal(run(a.nr.personality, [0x0400000]), EPERM); // READ_IMPLIES_EXEC
    assert.equal(run(a.nr.personality, [0x0040000]), EPERM); // ADDR_NO_RANDOMIZE
  });

  test(`seccomp ${a.name}: mknod makes FIFOs, sockets and files, never a device node`, () => {
    const calls: [number, number][] = [[a.nr.mknodat, 2]];
    if (a.nr.mknod !== undefined) calls.push([a.nr.mknod, 1]);
    for (const [n, modeArg] of calls) {
      const withMode = (mode: number) => run(n, Array.from({ length: modeArg + 1 }, (_, i) => (i === modeArg ? mode : 0)));
      for (const type of [0o010000, 0o140000, 0o100000, 0]) assert.equal(withMode(type | 0o644), ALLOW, `type 0o${type.toString(8)}`);
      assert.equal(withMode(0o020000 | 0o600), EPERM, 'character device');
      assert.equal(withMode(0o060000 | 0o600), EPERM, 'block device');
      assert.equal(withMode(0o060000 | 0o4777), EPERM, 'block device with set-id bits');
    }
  });

  test(`seccomp ${a.name}: any other syscall number is allowed`, () => {
    const special = new Set(Object.values(a.nr));
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x3fffffff }), (n) => {
        fc.pre(!special.has(n));
        return run(n) === ALLOW;
      }),
      { numRuns: 2000 },
    );
    assert.equal(run(0), ALLOW); // read on x86_64, io_setup on arm64
    assert.equal(run(59), ALLOW); // execve on x86_64, pipe2 on arm64
  });
}

test('seccomp x86_64: x32-ABI numbers are EPERM', () => {
  const x86 = ARCHES.find((a) => a.name === 'x86_64')!;
  assert.equal(evaluate(filter, { nr: 0x40000000 | 39, arch: x86.auditArch }), EPERM);
  assert.equal(evaluate(filter, { nr: 0x40000000 | x86.nr.mount!, arch: x86.auditArch }), EPERM);
});

test('seccomp: an unknown architecture (i386, arm32, x32 arch value) kills the process', () => {
  for (const arch of [0x40000003, 0x40000028, 0xc000003f, 0]) {
    assert.equal(evaluate(filter, { nr: 39, arch }), KILL_PROCESS, `arch 0x${arch.toString(16)}`);
  }
});
