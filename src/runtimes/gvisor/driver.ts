/**
 * The `gvisor` runtime: the docker driver with the runsc OCI runtime, so a
 * sandbox's system calls meet gVisor's user-space kernel instead of the
 * host's. Templates see the same sandboxes as with `docker`; what differs
 * inside the driver is described in ./sentry.ts.
 */
import { SENTRY_HOST_DIR, DockerRuntime, withTimeout } from '../docker/driver.js';
import { seccompMounts, underFilter } from './seccomp.js';
import type { RuntimeCheck } from '../types.js';

/** The name scripts/setup registers runsc under in /etc/docker/daemon.json. */
export const RUNSC = 'runsc';
/** The image check() starts a tiny sandbox from (built by scripts/build-images). */
const CHECK_IMAGE = 'kiln-python:local';

export interface GvisorRuntimeOptions {
  instanceId: string;
  socketPath: string;
}

export class GvisorRuntime extends DockerRuntime {
  constructor(opts: GvisorRuntimeOptions) {
    super({ ...opts, name: 'gvisor', ociRuntime: RUNSC, sentry: true });
  }

  /** The engine knows runsc, and a tiny container really starts and runs under it, with kiln's seccomp filter. */
  override async check(): Promise<RuntimeCheck> {
    const engine = await super.check();
    if (!engine.ok) return engine;
    const fix = 'run scripts/setup as root (it registers runsc in /etc/docker/daemon.json and reloads dockerd); see /var/log/kiln-dockerd.log';
    let mounts;
    try {
      mounts = seccompMounts(SENTRY_HOST_DIR);
    } catch (e) {
      return { runtime: this.name, ok: false, detail: (e as Error).message, fix: 'run scripts/setup as root' };
    }
    try {
      const [banner = '', filtered = ''] = (await this.runTiny(mounts)).split('\n');
      if (!banner.includes('gVisor')) {
        return { runtime: this.name, ok: false, detail: `a runsc container ran but does not report the gVisor kernel: ${JSON.stringify(banner.slice(0, 200))}`, fix };
      }
      if (!filtered.includes('Operation not permitted')) {
        return { runtime: this.name, ok: false, detail: `kiln's seccomp filter did not hold in a runsc container: ${JSON.stringify(filtered.slice(0, 200))}`, fix };
      }
      return { runtime: this.name, ok: true, detail: `${engine.detail}; a runsc container started (${banner.trim()}) and kiln's seccomp filter held` };
    } catch (e) {
      return { runtime: this.name, ok: false, detail: `runsc is registered but a container does not run under it: ${(e as Error).message}`, fix };
    }
  }

  /**
   * Starts a throwaway runsc container that prints the kernel's boot banner,
   * then, under kiln's filter, what dmesg gets (the filter denies its syslog call); always removed.
   */
  private async runTiny(mounts: ReturnType<typeof seccompMounts>): Promise<string> {
    const container = await this.docker.createContainer({
      Image: CHECK_IMAGE,
      // gVisor's dmesg is its own boot log, whose first line names gVisor; a host kernel's would not.
      Cmd: ['/bin/sh', '-c', 'dmesg | head -n 1; exec "$@"', 'kiln-check', ...underFilter(['/bin/sh', '-c', 'dmesg 2>&1 | head -n 1'])],
      Labels: { 'kiln.check': this.name },
      NetworkDisabled: true,
      HostConfig: { Runtime: RUNSC, NetworkMode: 'none', AutoRemove: false, Memory: 64 * 1024 * 1024, Mounts: mounts },
    });
    try {
      await container.start();
      const done = (await withTimeout(container.wait(), 30000)) as { StatusCode: number };
      const logs = (await container.logs({ stdout: true, stderr: true })) as Buffer;
      const text = logs.toString('latin1').replace(/[\x00-\x02]\x00\x00\x00[\s\S]{4}/g, '');
      if (done.StatusCode !== 0) throw new Error(`the check container exited ${done.StatusCode}: ${text.trim().slice(0, 300)}`);
      return text;
    } finally {
      await container.remove({ force: true }).catch(() => undefined);
    }
  }
}
