/**
 * Whether a server inside a sandbox listens on a TCP port, read from the
 * kernel's socket table of the sandbox's network namespace
 * (`/proc/<pid>/net/tcp` and `tcp6` of any process in it). A read costs tens of
 * microseconds and opens no connection, so a starting server can be watched
 * every few milliseconds; a probe through the port link costs a connection each time.
 */
import { readFileSync } from 'node:fs';

/** TCP_LISTEN in the `st` column. */
const LISTEN = '0A';

/** Local addresses a port link (which dials 127.0.0.1) reaches, as /proc writes them. */
const REACHABLE = new Set([
  '00000000', // 0.0.0.0
  '0100007F', // 127.0.0.1 (host byte order, little-endian)
  '00000000000000000000000000000000', // :: (dual-stack unless IPV6_V6ONLY)
  '0000000000000000FFFF00000100007F', // ::ffff:127.0.0.1
]);

/** Whether a /proc/net/tcp{,6} table has a listening socket on `port` at a reachable address. */
export function tableListensOn(table: string, port: number): boolean {
  const want = port.toString(16).toUpperCase().padStart(4, '0');
  for (const line of table.split('\n')) {
    // "  sl  local_address rem_address   st ..."; local_address is ADDR:PORT in hex
    const cols = line.trim().split(/\s+/);
    if (cols[3] !== LISTEN) continue;
    const local = cols[1] ?? '';
    const colon = local.indexOf(':');
    if (local.slice(colon + 1) === want && REACHABLE.has(local.slice(0, colon))) return true;
  }
  return false;
}

/**
 * Whether the network namespace of host pid `nsPid` has a reachable listener on
 * `port`. Synchronous: procfs answers from kernel memory faster than a hop
 * through libuv's thread pool (as with the cgroup files).
 */
export function portListening(nsPid: number, port: number): boolean {
  for (const table of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = readFileSync(`/proc/${nsPid}/net/${table}`, 'utf8');
    } catch {
      continue; // no IPv6 in this kernel, or the process is gone
    }
    if (tableListensOn(text, port)) return true;
  }
  return false;
}
