/**
 * The `kiln` command. Server and local commands load the layered config;
 * client commands talk to KILN_URL with KILN_TOKEN. Every failure is one line
 * on stderr and a non-zero exit.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { basename, extname, join, posix } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { loadConfig } from '../config/load.js';
import type { KilnConfig } from '../config/schema.js';
import { KilnError, messageOf } from '../errors.js';
import { startKiln } from '../app.js';
import { buildApi, VERSION } from '../api/server.js';
import type { Run, Stage } from '../runs/types.js';
import type { SessionView, SessionWarning } from '../sessions/types.js';
import { absolute, api, apiBytes, followEvents, serverUrl } from './client.js';
import { printRun } from './output.js';
import { LOCAL } from '../auth/principal.js';
import { authRequired } from '../api/auth.js';
import { registerTokenCommands } from './tokens.js';
import { wireProblem } from '../proxy/wire.js';
import { favordynmodsProblem } from '../runtimes/process/cgroups.js';
import { relativePathProblem } from '../sandbox/paths.js';

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

/** The configuration as `kiln config` shows it: secret values replaced by ***. */
export function redactSecrets(config: KilnConfig): KilnConfig {
  const out = structuredClone(config);
  for (const t of Object.values(out.templates)) if (t.secretEnv) for (const k of Object.keys(t.secretEnv)) t.secretEnv[k] = '***';
  return out;
}

const serverOptions = (cmd: Command) =>
  cmd
    .option('--config <file>', 'config file (default ./kiln.yaml if present; env KILN_CONFIG)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'TCP port (default 7070)')
    .option('--data-dir <dir>', 'where the store and instance id live (default ./.kiln)');

/** `<session id>:<path>` (a session id is a UUID, so `./a:b` and `C:x` stay local paths). */
function sessionPath(arg: string): { id: string; path: string } | undefined {
  const m = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):(.*)$/.exec(arg);
  if (!m) return undefined;
  // Checked here as the server would: a URL with a ".." segment would be resolved away before it left.
  const problem = relativePathProblem(m[2]!);
  if (problem) throw new KilnError('invalid_flag', `cp: ${arg}: the path ${problem}`);
  return { id: m[1]!, path: m[2]! };
}

/** Text that may carry a sandbox's output (a start failure's message), without terminal control sequences. */
const printable = (text: string) => text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, '?');

/** `--stdin <text>` and `--stdin-file <file>` (`-`: this command's own standard input, read to its end). */
const stdinOptions = (cmd: Command) =>
  cmd.option('--stdin <text>', 'standard input for the program').option('--stdin-file <file>', 'standard input from a file (- for this command\'s own)');

interface StdinFlags {
  stdin?: string;
  stdinFile?: string;
}

async function stdinOf(o: StdinFlags): Promise<string | undefined> {
  if (o.stdinFile === undefined) return o.stdin;
  if (o.stdin !== undefined) throw new KilnError('invalid_flag', 'give --stdin or --stdin-file, not both');
  if (o.stdinFile === '-') return (await readStdin()).toString('utf8');
  try {
    return readFileSync(o.stdinFile, 'utf8');
  } catch (e) {
    throw new KilnError('invalid_flag', `--stdin-file: cannot read ${o.stdinFile}: ${(e as NodeJS.ErrnoException).code ?? messageOf(e)}`);
  }
}

/** `KEY=VALUE` flags (`--env`, `--metadata`) as an object. */
function keyValues(flag: string, pairs: string[]): Record<string, string> {
  return Object.fromEntries(
    pairs.map((kv) => {
      const i = kv.indexOf('=');
      if (i < 1) throw new KilnError('invalid_flag', `--${flag}: ${JSON.stringify(kv)} is not KEY=VALUE`);
      return [kv.slice(0, i), kv.slice(i + 1)];
    }),
  );
}

/** A flag that takes a whole number of `unit` (digits only: `0x10` and `1e3` are typos more often than not). */
function wholeNumber(flag: string, value: string, unit: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new KilnError('invalid_flag', `--${flag}: ${JSON.stringify(value)} is not a whole number of ${unit}`);
  return n;
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

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

async function runBody(config: KilnConfig | undefined, file: string, o: StdinFlags & { language?: string; arg?: string[]; template?: string }) {
  const language = o.language ?? (config ? languageForFile(config, file) : undefined);
  const stdin = await stdinOf(o);
  return {
    language,
    files: [{ name: basename(file), content: readProgram(file) }],
    ...(stdin !== undefined ? { stdin } : {}),
    ...(o.arg?.length ? { args: o.arg } : {}),
    ...(o.template ? { template: o.template } : {}),
  };
}

export function buildCli(): Command {
  const program = new Command('kiln').version(VERSION).description('Isolated, fast-to-start compute: runs, sessions, jobs.');
  // Usage errors are one line too (`kiln: missing required argument 'template'`), exit 2; subcommands inherit this.
  program.exitOverride();
  program.configureOutput({ outputError: (text, write) => write(`kiln: ${text.replace(/^error: /, '').trim()} (see --help)\n`) });

  serverOptions(program.command('serve').description('start the API server')).action(async (flags: ServerFlags) => {
    const config = configFrom(flags);
    const required = authRequired(config.auth, config.server.host); // refuses auth off on a public address before anything starts
    // Kiln's own warnings (a sandbox that would not go, a pool that cannot refill) go to the server's log,
    // which exists once the API is built: what comes before waits for it.
    const early: [level: 'warn' | 'error', obj: object, msg: string][] = [];
    let target: { warn(o: object, m: string): void; error(o: object, m: string): void } | undefined;
    const kilnLog = {
      warn: (o: object, m: string) => (target ? target.warn(o, m) : early.push(['warn', o, m])),
      error: (o: object, m: string) => (target ? target.error(o, m) : early.push(['error', o, m])),
    };
    const kiln = await startKiln(config, { log: kilnLog });
    const app = await buildApi(kiln, { logger: { level: config.server.logLevel } });
    const log = app.log;
    target = log;
    for (const [level, o, m] of early.splice(0)) log[level](o, m);
    if (!required) log.warn({ host: config.server.host }, 'auth is off: loopback only, every local caller is admin');
    else if (!config.auth.jwt && (await kiln.tokens.count()) === 0) log.warn('auth is on and no API token exists yet: make one with kiln token create --scope admin');
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
    // Each value written out where it applies: defaults share objects, and anchors (&a1, *a1) would hide which template has what.
    process.stdout.write(toYaml(redactSecrets(configFrom(flags)), { aliasDuplicateObjects: false }));
  });

  serverOptions(program.command('doctor').description('tell which runtimes work here and how to fix the rest')).action(async (flags: ServerFlags) => {
    const config = configFrom(flags);
    const kiln = await startKiln(config, { ephemeral: true });
    try {
      const checks = await kiln.runtimes.checkAll(0);
      for (const c of checks) {
        process.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'} ${c.runtime.padEnd(8)} ${c.detail}\n`);
        if (c.fix) process.stdout.write(`     fix: ${c.fix}\n`);
      }
      const slowJoins = favordynmodsProblem();
      process.stdout.write(slowJoins ? `warn cgroups  ${slowJoins}\n` : 'ok   cgroups  favordynmods: a sandbox joins its cgroups without waiting for an RCU grace period\n');
      const noWires = wireProblem();
      process.stdout.write(noWires ? `warn proxy    ${noWires} (until then the proxy uses node's sockets: more CPU per request)\n` : 'ok   proxy    plain TCP read and written natively (kiln-wire addon)\n');
      const broken = new Set(checks.filter((c) => !c.ok).map((c) => c.runtime));
      for (const [name, t] of Object.entries(config.templates)) {
        if (broken.has(t.runtime)) process.stdout.write(`     template ${name} (runtime ${t.runtime}) will not start here\n`);
      }
      process.exitCode = checks.find((c) => c.runtime === 'process')?.ok ? 0 : 1;
    } finally {
      await kiln.close();
    }
  });

  serverOptions(
    stdinOptions(
      program
        .command('run <file>')
        .description('compile and run a file in a local sandbox (no server needed)')
        .option('-l, --language <name>', 'language (default: from the file extension)'),
    )
      .option('--template <name>', 'run in another template')
      .option('--arg <value...>', 'arguments for the program'),
  ).action(async (file: string, o: ServerFlags & StdinFlags & { language?: string; template?: string; arg?: string[] }) => {
    const config = configFrom(o);
    const body = await runBody(config, file, o);
    const kiln = await startKiln(config, { ephemeral: true });
    try {
      const { run } = await kiln.runs.submit(body, LOCAL);
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
  stdinOptions(runs.command('create <file>').description('submit a file and print its output and verdict').requiredOption('-l, --language <name>', 'language (see GET /v1/languages)'))
    .option('--template <name>', 'run in another template')
    .option('--arg <value...>', 'arguments for the program')
    .option('--no-wait', 'print the run id at once instead of waiting')
    .action(async (file: string, o: StdinFlags & { language: string; template?: string; arg?: string[]; wait: boolean }) => {
      const body = { ...(await runBody(undefined, file, o)), wait: o.wait };
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

  const session = program.command('session').description(`sessions on a server (KILN_URL, now ${serverUrl()})`);
  session
    .command('create <template>')
    .description('start a session and print its id and URL')
    .option('--env <KEY=VALUE...>', 'environment for the server and every exec in it (starts it cold)')
    .option('--metadata <KEY=VALUE...>', 'labels kept with the session and shown in listings and events')
    .option('--idle <seconds>', 'idle timeout (at most the template\'s)')
    .option('--max <seconds>', 'max duration (at most the template\'s)')
    .option('--json', 'print the session as JSON')
    .option('--no-wait', 'answer at once, even while a cold start is under way')
    .action(async (template: string, o: { env?: string[]; metadata?: string[]; idle?: string; max?: string; json?: boolean; wait: boolean }) => {
      const body: Record<string, unknown> = { template };
      if (o.env) body.env = keyValues('env', o.env);
      if (o.metadata) body.metadata = keyValues('metadata', o.metadata);
      for (const [flag, key] of [['idle', 'idleTimeoutS'], ['max', 'maxDurationS']] as const) {
        if (o[flag] !== undefined) body[key] = wholeNumber(flag, o[flag]!, 'seconds');
      }
      let s = await api<SessionView>('POST', '/v1/sessions', body);
      if (s.status === 'starting' && o.wait) {
        // A cold start: wait for its outcome, as a browser at the URL would.
        process.stderr.write(`kiln: ${s.id} starting cold…\n`);
        await followEvents(`/v1/sessions/${encodeURIComponent(s.id)}/events`, (_event, data) => {
          s = { ...s, ...(data as SessionView) };
          return s.status !== 'starting';
        });
        const ended = s as SessionView; // changed by the event callback
        if (ended.status !== 'ready') throw new KilnError('session_failed', `session ${ended.id} ${ended.status}${ended.error ? `: ${printable(ended.error)}` : ''}`, 0);
      }
      process.stdout.write(o.json ? `${JSON.stringify(s, null, 2)}\n` : `${s.id} ${s.status} ${absolute(s.url ?? '')}\n`);
    });
  session
    .command('ls')
    .description('list sessions (a header line, then one line each; the URL while it can be reached)')
    .option('--json', 'print the list as JSON')
    .action(async (o: { json?: boolean }) => {
      const sessions = await api<SessionView[]>('GET', '/v1/sessions');
      if (o.json) return void process.stdout.write(`${JSON.stringify(sessions, null, 2)}\n`);
      const line = (id: string, template: string, status: string, reason: string, created: string, url: string) =>
        `${id.padEnd(36)}  ${template.padEnd(12)} ${status.padEnd(8)} ${reason.padEnd(12)} ${created.padEnd(24)} ${url}`.trimEnd() + '\n';
      process.stdout.write(line('ID', 'TEMPLATE', 'STATUS', 'REASON', 'CREATED', 'URL'));
      for (const s of sessions) {
        const live = s.status === 'starting' || s.status === 'ready';
        process.stdout.write(line(s.id, s.template, s.status, s.stopReason ?? '', s.createdAt, live && s.url ? absolute(s.url) : ''));
      }
    });
  stdinOptions(session.command('exec <id> <command...>').description('run a command in a session (put -- before a command with flags)'))
    .option('--timeout <ms>', 'deadline in ms')
    .action(async (id: string, command: string[], o: StdinFlags & { timeout?: string }) => {
      const body: Record<string, unknown> = { command };
      const stdin = await stdinOf(o);
      if (stdin !== undefined) body.stdin = stdin;
      if (o.timeout !== undefined) body.timeoutMs = wholeNumber('timeout', o.timeout, 'milliseconds');
      const r = await api<Stage & { killedBy: string | null; oomKilled: boolean }>('POST', `/v1/sessions/${encodeURIComponent(id)}/exec`, body);
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      if (r.killedBy || r.oomKilled) process.stderr.write(`kiln: killed: ${r.oomKilled ? 'out of memory' : r.killedBy === 'output_limit' ? 'output limit' : `time limit (${r.killedBy})`}\n`);
      const signals = (await import('node:os')).constants.signals as Record<string, number>;
      process.exitCode = r.exitCode ?? (r.signal ? 128 + (signals[r.signal] ?? 0) : 1);
    });
  session
    .command('get <id>')
    .description('print one session as JSON (an ended one too, as the store holds it)')
    .action(async (id: string) => {
      process.stdout.write(`${JSON.stringify(await api<SessionView>('GET', `/v1/sessions/${encodeURIComponent(id)}`), null, 2)}\n`);
    });
  session
    .command('watch <id>')
    .description("follow a session's events (status, warnings before idle timeout or max duration) until it ends")
    .option('--json', 'print each event as a JSON line: {"event": …, "data": …}')
    .action(async (id: string, o: { json?: boolean }) => {
      await followEvents(`/v1/sessions/${encodeURIComponent(id)}/events`, (event, data) => {
        if (o.json) return void process.stdout.write(`${JSON.stringify({ event, data })}\n`);
        const at = new Date().toISOString();
        if (event === 'warning') {
          const w = data as SessionWarning;
          process.stdout.write(`${at} warning: ${w.kind === 'idle' ? 'ends if still idle' : 'reaches its max duration'} in ${w.inS} s\n`);
        } else {
          const v = data as SessionView;
          process.stdout.write(`${at} ${v.status}${v.stopReason ? ` (${v.stopReason})` : ''}${v.error ? `: ${printable(v.error)}` : ''}\n`);
        }
      });
    });
  session
    .command('cp <from> <to>')
    .description('copy a file into or out of a session: cp ./in.csv <id>:data/in.csv, cp <id>:out.txt . (- is stdin or stdout)')
    .action(async (from: string, to: string) => {
      const [src, dest] = [sessionPath(from), sessionPath(to)];
      if (!src === !dest) throw new KilnError('invalid_flag', 'cp: exactly one of <from> and <to> must be in a session, as <session id>:<path>');
      const filesUrl = (p: { id: string; path: string }) => `/v1/sessions/${encodeURIComponent(p.id)}/files/${p.path.split('/').map(encodeURIComponent).join('/')}`;
      if (dest) {
        const data = from === '-' ? await readStdin() : await readFile(from).catch((e: NodeJS.ErrnoException) => {
          throw new KilnError('invalid_flag', `cp: cannot read ${from}: ${e.code ?? e.message}`);
        });
        await apiBytes('PUT', filesUrl(dest), data);
        return;
      }
      const data = await apiBytes('GET', filesUrl(src!));
      if (to === '-') return void process.stdout.write(data);
      // Into a directory: under the file's own name, as cp does.
      const target = (await stat(to).catch(() => undefined))?.isDirectory() ? join(to, posix.basename(src!.path)) : to;
      await writeFile(target, data).catch((e: NodeJS.ErrnoException) => {
        throw new KilnError('invalid_flag', `cp: cannot write ${target}: ${e.code ?? e.message}`);
      });
    });
  session
    .command('rm <id>')
    .description('stop a session')
    .action(async (id: string) => {
      const s = await api<SessionView>('DELETE', `/v1/sessions/${encodeURIComponent(id)}`);
      process.stdout.write(`${s.id} ${s.status} (${s.stopReason})\n`);
    });
  session
    .command('open <template>')
    .description('claim a fresh instance through the deep link and print its URL')
    .action(async (template: string) => {
      const headers: Record<string, string> = {};
      if (process.env.KILN_TOKEN) headers.authorization = `Bearer ${process.env.KILN_TOKEN}`;
      const res = await fetch(`${serverUrl()}/open/${encodeURIComponent(template)}`, { redirect: 'manual', headers }).catch((e: Error) => {
        throw new KilnError('unreachable', `cannot reach the kiln server at ${serverUrl()} (set KILN_URL): ${e.message}`, 0);
      });
      const location = res.headers.get('location');
      if (res.status !== 302 || !location) {
        const text = await res.text();
        let message = res.status === 404 ? `no template named ${template} here` : `HTTP ${res.status}`;
        try {
          message = (JSON.parse(text) as { error: { message: string } }).error.message;
        } catch {
          if (res.status === 503) message = `all instances of ${template} are busy; retry in ${res.headers.get('retry-after') ?? 'a few'} seconds`;
          if (res.status === 429) message = `too many sessions opened from this address; retry in ${res.headers.get('retry-after') ?? 'a few'} seconds`;
        }
        throw new KilnError('open_failed', message, res.status);
      }
      process.stdout.write(`${absolute(location)}\n`);
    });

  registerTokenCommands(program, serverOptions, configFrom);

  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and --version end here with 0; a usage error was printed already.
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    process.stderr.write(`kiln: ${messageOf(e)}\n`);
    process.exitCode = e instanceof KilnError && e.code === 'unreachable' ? 3 : 2;
  }
}
