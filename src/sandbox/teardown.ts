/**
 * Destroying a sandbox that holds a share of the budget: the share goes back
 * only once the sandbox is really gone. A destroy the runtime cannot finish
 * now (Docker's engine restarting) is tried again in the background, so a
 * stop still answers at once and the machine is never overcommitted.
 */
import type { Sandbox } from '../runtimes/types.js';

/** Pauses between tries, ms: doubling from min to max. */
const RETRY_MS = { min: 1000, max: 30_000 };

/**
 * Destroy `sandbox`, then call `gone`. Resolves after the first try; if it
 * failed, `gone` is called when a later try succeeds (a kiln that stops first
 * leaves the rest to the next start's orphan reaping).
 */
export async function teardown(sandbox: Sandbox, gone: () => void, log?: { warn(o: object, m: string): void }, what: object = {}): Promise<void> {
  try {
    await sandbox.destroy();
  } catch (e) {
    log?.warn({ ...what, sandbox: sandbox.id, err: (e as Error).message }, 'sandbox destroy failed; trying again in the background, its budget held until it is gone');
    void retry(sandbox, gone, log, what);
    return;
  }
  gone();
}

async function retry(sandbox: Sandbox, gone: () => void, log: { warn(o: object, m: string): void } | undefined, what: object): Promise<void> {
  for (let pause = RETRY_MS.min; ; pause = Math.min(pause * 2, RETRY_MS.max)) {
    // Unref'd: a shutdown does not wait for the engine to come back.
    await new Promise((r) => setTimeout(r, pause).unref());
    try {
      await sandbox.destroy();
      log?.warn({ ...what, sandbox: sandbox.id }, 'sandbox destroyed after all; its budget is back');
      return gone();
    } catch {
      // still failing: the next pause is longer
    }
  }
}
