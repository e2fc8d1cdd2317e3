/**
 * `npm run bench [-- --quick] [-- --only process|docker|sessions|proxy]`:
 * kiln's benchmarks — runs (bench/runs.ts; `process` or `docker` picks one
 * runtime's part) and sessions (bench/sessions.ts; `proxy` runs only its proxy part). Each figure is printed beside a
 * baseline measured in the same run; `--quick` shortens every series. Missed
 * targets are reported, never fatal: the exit code is non-zero only on a crash.
 */
import { benchRuns, type RunsBenchOptions } from './runs.js';
import { benchSessions } from './sessions.js';

const USAGE = 'usage: npm run bench -- [--quick] [--only process|docker|sessions|proxy]';

class UsageError extends Error {}

type Options = RunsBenchOptions & { sessionsOnly?: boolean; proxyOnly?: boolean };

function parseArgs(argv: string[]): Options {
  const opts: Options = { quick: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') opts.quick = true;
    else if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? argv[++i] : arg.slice('--only='.length);
      if (value === 'sessions') opts.sessionsOnly = true;
      else if (value === 'proxy') opts.sessionsOnly = opts.proxyOnly = true;
      else if (value === 'process' || value === 'docker') opts.only = value;
      else throw new UsageError(`--only: expected process, docker, sessions or proxy, got ${JSON.stringify(value)}\n${USAGE}`);
    } else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new UsageError(`unknown argument ${JSON.stringify(arg)}\n${USAGE}`);
  }
  return opts;
}

try {
  const opts = parseArgs(process.argv.slice(2));
  if (!opts.sessionsOnly) await benchRuns(opts);
  // Sessions run on the process runtime: part of a full run and of --only sessions.
  if (opts.sessionsOnly || opts.only === undefined) await benchSessions({ quick: opts.quick, proxyOnly: opts.proxyOnly === true });
} catch (e) {
  if (e instanceof UsageError) {
    console.error(`bench: ${e.message}`);
    process.exitCode = 2;
  } else {
    console.error(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exitCode = 1;
  }
}
