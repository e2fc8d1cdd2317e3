/**
 * The `kiln` command. Server and local commands load the layered config;
 * client commands talk to KILN_URL with KILN_TOKEN. Every failure is one line
 * on stderr and a non-zero exit.
 */
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { basename, extname } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { loadConfig } from '../config/load.js';
import type { KilnConfig } from '../config/schema.js';
import { KilnError, messageOf } from '../errors.js';
import { startKiln } from '../app.js';
import { buildApi, VERSION } from '../api/server.js';
import type { Run } from '../runs/types.js';
import { api, followEvents, serverUrl } from './client.js';
import { printRun } from './output.js';

interface ServerFlags {
  config?: string;
  host?: string;
  port?: string;
  dataDir?: string;
}

function configFrom(flags: ServerFlags): KilnConfig {
  let port: number | undefined;
  if (flags.port !== undefined) {
    port = Number(flags.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new KilnError('invalid_flag', `--port: ${JSON.stringify(flags.port)} is not a port number`);
  }
  return loadConfig({ file: flags.config, flags: { 'server.host': flags.host, 'server.port': port, 'server.dataDir': flags.dataDir } }).config;
}

const serverOptions = (cmd: Command) =>
  cmd
    .option('--config <file>', 'config file (default ./kiln.yaml if present; env KILN_CONFIG)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'TCP port (default 7070)')
    .option('--data-dir <dir>', 'where the store and instance id live (default ./.kiln)');

/** Language for a file: the one whose `file` has the same extension (the first configured wins). */
function languageForFile(config: KilnConfig, file: string): string {
  const ext = extname(file);
  const hit = Object.entries(config.languages).find(([, l]) => extname(l.file) === ext);
  if (!hit) throw new KilnError('unknown_language', `cannot tell the language of ${basename(file)} from its extension; pass --language (see kiln languages)`);
  return hit[0];
}

function readProgram(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new KilnError('file_unreadable', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? messageOf(e)}`);
  }
}

function runBody(config: KilnConfig | undefined, file: string, o: { language?: string; stdin?: string; arg?: string[]; template?: string }) {
  const language = o.language ?? (config ? languageForFile(config, file) : undefined);
  return {
    language,
    files: [{ name: basename(file), content: readProgram(file) }],
    ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
    ...(o.arg?.length ? { args: o.arg } : {}),
    ...(o.template ? { template: o.template } : {}),
  };
}

export function buildCli(): Command {
  const program = new Command('kiln').version(VERSION).description('Isolated, fast-to-start compute: runs, sessions, jobs.');
  program.showHelpAfterError();

  serverOptions(program.command('serve').description('start the API server')).action(async (flags: ServerFlags) => {
    const config = configFrom(flags);
    const kiln = await startKiln(config, {});
    const app = await buildApi(kiln, { logger: { level: config.server.logLevel } });
    const log = app.log;
    kiln.runs.languages().catch(() => undefined); // probe toolchain versions in the background
    if (kiln.recovered.orphans || kiln.recovered.interruptedRuns) log.warn(kiln.recovered, 'recovered from an earlier crash');
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) {
        log.warn('second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'shutting down: finishing accepted runs');
      const force = setTimeout(() => process.exit(1), 30000);
      force.unref();
      await app.close();
      await kiln.close();
      process.exit(0);
    };
    process.on('SIGINT', () => void stop('SIGINT'));
    process.on('SIGTERM', () => void stop('SIGTERM'));
    await app.listen({ host: config.server.host, port: config.server.port });
  });

  serverOptions(program.command('config').description('print the effective configuration')).action((flags: ServerFlags) => {
    process.stdout.write(toYaml(configFrom(flags)));
  });

  serverOptions(program.command('doctor').description('tell which runtimes work here and how to fix the rest')).action(async (flags: ServerFlags) => {
    const config = configFrom(flags);
    const kiln = await startKiln(config, { ephemeral: true });
    try {
      const checks = await kiln.runtimes.checkAll();
      for (const c of checks) {
        process.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'} ${c.runtime.padEnd(8)} ${c.detail}\n`);
        if (c.fix) process.stdout.write(`     fix: ${c.fix}\n`);
      }
      const used = new Set(Object.values(config.templates).map((t) => t.runtime));
      const broken = checks.filter((c) => !c.ok && used.has(c.runtime as never));
      for (const [name, t] of Object.entries(config.templates)) {
        if (broken.some((b) => b.runtime === t.runtime)) process.stdout.write(`     template ${name} (runtime ${t.runtime}) will not start here\n`);
      }
      process.exitCode = checks.find((c) => c.runtime === 'process')?.ok ? 0 : 1;
    } finally {
      await kiln.close();
    }
  });

  serverOptions(
    program
      .command('run <file>')
      .description('compile and run a file in a local sandbox (no server needed)')
      .option('-l, --language <name>', 'language (default: from the file extension)')
      .option('--stdin <text>', 'standard input for the program')
      .option('--template <name>', 'run in another template')
      .option('--arg <value...>', 'arguments for the program'),
  ).action(async (file: string, o: ServerFlags & { language?: string; stdin?: string; template?: string; arg?: string[] }) => {
    const config = configFrom(o);
    const body = runBody(config, file, o);
    const kiln = await startKiln(config, { ephemeral: true });
    try {
      const { run } = await kiln.runs.submit(body);
      process.exitCode = printRun(await kiln.runs.waitDone(run.id));
    } finally {
      await kiln.close();
    }
  });

  serverOptions(program.command('languages').description('list configured languages and their toolchain versions')).action(async (flags: ServerFlags) => {
    const kiln = await startKiln(configFrom(flags), { ephemeral: true });
    try {
      for (const l of await kiln.runs.languages()) process.stdout.write(`${l.name.padEnd(14)} ${l.template.padEnd(10)} ${l.compiled ? 'compiled   ' : 'interpreted'} ${l.version}\n`);
    } finally {
      await kiln.close();
    }
  });

  const runs = program.command('runs').description(`runs on a server (KILN_URL, now ${serverUrl()})`);
  runs
    .command('create <file>')
    .description('submit a file and print its output and verdict')
    .requiredOption('-l, --language <name>', 'language (see GET /v1/languages)')
    .option('--stdin <text>', 'standard input for the program')
    .option('--template <name>', 'run in another template')
    .option('--arg <value...>', 'arguments for the program')
    .option('--no-wait', 'print the run id at once instead of waiting')
    .action(async (file: string, o: { language: string; stdin?: string; template?: string; arg?: string[]; wait: boolean }) => {
      const body = { ...runBody(undefined, file, o), wait: o.wait };
      const run = await api<Run>('POST', '/v1/runs', body);
      if (!o.wait) process.stdout.write(`${run.id}\n`);
      else process.exitCode = printRun(run);
    });
  runs
    .command('get <id>')
    .description('print a run as JSON')
    .action(async (id: string) => {
      process.stdout.write(`${JSON.stringify(await api<Run>('GET', `/v1/runs/${encodeURIComponent(id)}`), null, 2)}\n`);
    });
  runs
    .command('watch <id>')
    .description('follow a run until it is done, then print its output')
    .action(async (id: string) => {
      let last: Run | undefined;
      await followEvents(`/v1/runs/${encodeURIComponent(id)}/events`, (event, data) => {
        process.stderr.write(`kiln: ${event}\n`);
        last = data as Run;
      });
      if (last) process.exitCode = printRun(last);
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    process.stderr.write(`kiln: ${messageOf(e)}\n`);
    process.exitCode = e instanceof KilnError && e.code === 'unreachable' ? 3 : 2;
  }
}
