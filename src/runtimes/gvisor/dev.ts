/**
 * /dev in a gVisor sandbox: only null, zero, random, urandom and tty, as in
 * the other runtimes.
 *
 * The sentry makes its own /dev (emulated, never the host's devices), with
 * full, fuse, net/tun and pts/ptmx (/dev/ptmx links to it) besides. Docker's
 * MaskedPaths does nothing there, runsc refuses to start with a host device
 * bound in, and turns a tmpfs on /dev/pts into its devpts. What it accepts: an
 * empty read-only file bound over each extra node, and an empty read-only
 * tmpfs over /dev/net.
 */
import { hostFile, type BindMount } from './seccomp.js';

const EXTRA_NODES = ['/dev/full', '/dev/fuse', '/dev/pts/ptmx'];
const EXTRA_DIRS = ['/dev/net'];

/** The mounts and tmpfs entries of a gVisor sandbox's HostConfig that cover the extra devices. */
export function deviceMasks(dir: string): { mounts: BindMount[]; tmpfs: Record<string, string> } {
  const empty = hostFile(dir, 'empty', '', 0o444);
  return {
    mounts: EXTRA_NODES.map((target) => ({ Type: 'bind', Source: empty, Target: target, ReadOnly: true })),
    tmpfs: Object.fromEntries(EXTRA_DIRS.map((d) => [d, 'ro,nosuid,nodev,noexec,size=4k,mode=0555'])),
  };
}
