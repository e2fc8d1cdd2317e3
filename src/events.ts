/**
 * One typed event map for the service. Emitted through `safeEmit`, so a
 * listener that throws (a metrics bug, a closed stream) never breaks the loop
 * that emitted: streams, metrics and logs all subscribe here.
 */
import { EventEmitter } from 'node:events';
import type { Run } from './runs/types.js';
import type { PoolView } from './pools/pool.js';
import type { SessionView, SessionWarning } from './sessions/types.js';

export interface KilnEvents {
  'run:queued': [Run];
  'run:running': [Run];
  'run:done': [Run];
  'session:status': [SessionView];
  'session:warning': [SessionView, SessionWarning];
  'session:claimed': [{ template: string; fromPool: boolean; ms: number }];
  'pool:ready': [PoolView];
  'pool:refill:failed': [{ template: string; error: string }];
}

export class KilnEventBus {
  private readonly emitter = new EventEmitter();
  constructor(private readonly onListenerError: (event: string, err: unknown) => void = () => undefined) {
    this.emitter.setMaxListeners(0);
  }

  on<K extends keyof KilnEvents>(event: K, fn: (...args: KilnEvents[K]) => void): () => void {
    const wrapped = (...args: unknown[]) => {
      try {
        fn(...(args as KilnEvents[K]));
      } catch (err) {
        this.onListenerError(event, err);
      }
    };
    this.emitter.on(event, wrapped);
    return () => this.emitter.off(event, wrapped);
  }

  safeEmit<K extends keyof KilnEvents>(event: K, ...args: KilnEvents[K]): void {
    this.emitter.emit(event, ...args);
  }
}
