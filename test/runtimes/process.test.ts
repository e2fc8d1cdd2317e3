import { randomBytes } from 'node:crypto';
import { ProcessRuntime } from '../../src/runtimes/process/driver.js';
import { DEFAULT_CONFIG } from '../../src/config/defaults.js';
import { runtimeContract } from './contract.js';

const instanceId = `test-${randomBytes(4).toString('hex')}`;
runtimeContract(
  () =>
    new ProcessRuntime({
      instanceId,
      sandboxRoot: '/run/kiln',
      uid: DEFAULT_CONFIG.runtimes.process.uid,
      gid: DEFAULT_CONFIG.runtimes.process.gid,
      systemDirs: DEFAULT_CONFIG.runtimes.process.systemDirs,
    }),
  { python: 'python3' },
);
