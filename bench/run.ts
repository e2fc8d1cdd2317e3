/**
 * `npm run bench [-- --quick] [-- --only process|docker]`: kiln's benchmarks.
 * Each figure is printed beside a baseline measured in the same run. Missed
 * targets are reported, never fatal: the exit code is non-zero only on a crash.
 */
import { benchRuns, type RunsBenchOptions } from './runs.js';

const USAGE = 'usage: npm run bench -- [--quick] [--only process|docker]';

class UsageError extends Error {}

function parseArgs(argv: string[]): RunsBenchOptions {
  const opts: RunsBenchOptions = { quick: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') opts.quick = true;
    else if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? argv[++i] : arg.slice('--only='.length);
      if (value !== 'process' && value !== 'docker') throw new UsageError(`--only: expected process or docker, got ${JSON.stringify(value)}\n${USAGE}`);
      opts.only = value;
    } else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new UsageError(`unknown argument ${JSON.stringify(arg)}\n${USAGE}`);
  }
  return opts;
}

try {
  await benchRuns(parseArgs(process.argv.slice(2)));
} catch (e) {
  if (e instanceof UsageError) {
    console.error(`bench: ${e.message}`);
    process.exitCode = 2;
  } else {
    console.error(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exitCode = 1;
  }
}
