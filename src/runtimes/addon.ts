/**
 * kiln's Node addons (plain N-API, built from C by scripts/setup into
 * /usr/local/lib/kiln/), loaded on first use: a missing one is a 503 that says
 * how to get it, and `kiln doctor` reports it.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { KilnError } from '../errors.js';

export interface AddonLoader<T> {
  /** The addon's exports; throws runtime_unavailable (503) when it is not built. */
  load(): T;
  /** Why it cannot be loaded, or undefined when it can. */
  problem(): string | undefined;
}

/**
 * A loader of the addon at `path`, described as `what` in errors ("the port
 * link addon"); `functions` are the exports it must have (one built from an
 * older source lacks the newer ones).
 */
export function addonLoader<T>(path: string, what: string, functions: (keyof T & string)[]): AddonLoader<T> {
  let loaded: T | undefined;
  const load = (): T => {
    if (loaded) return loaded;
    if (!existsSync(path)) throw new KilnError('runtime_unavailable', `${what} ${path} is missing: run scripts/setup, which builds it`, 503);
    let exports: T;
    try {
      exports = createRequire(import.meta.url)(path) as T;
    } catch (e) {
      // Built for another Node, or not an addon at all.
      throw new KilnError('runtime_unavailable', `${what} ${path} cannot be loaded (${(e as Error).message.split('\n')[0]}): run scripts/setup, which rebuilds it`, 503, { cause: e });
    }
    const missing = functions.filter((f) => typeof exports[f] !== 'function');
    if (missing.length > 0) throw new KilnError('runtime_unavailable', `${what} ${path} is out of date (no ${missing.join(', ')}): run scripts/setup, which rebuilds it`, 503);
    return (loaded = exports);
  };
  const problem = (): string | undefined => {
    try {
      load();
      return undefined;
    } catch (e) {
      return (e as Error).message;
    }
  };
  return { load, problem };
}
