import { randomBytes } from 'node:crypto';
import { DockerRuntime } from '../../src/runtimes/docker/driver.js';
import { runtimeContract } from './contract.js';

// Needs dockerd and the kiln-python:local image (scripts/setup makes both); fails, never skips, without them.
const instanceId = `test-${randomBytes(4).toString('hex')}`;
runtimeContract(
  () => Object.assign(new DockerRuntime({ instanceId, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' }), { testOptions: { image: 'kiln-python:local' } }),
  { python: 'python3' },
);

