/**
 * Layered configuration: CLI flags > KILN_* env > kiln.yaml (or --config) > defaults.
 * Validated once at start; an unknown or mistyped key is an error naming the key
 * and the file it came from.
 */
import { readFileSync, existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Value } from '@sinclair/typebox/value';
import type { TSchema } from '@sinclair/typebox';
import { ConfigSchema, type KilnConfig } from './schema.js';
import { DEFAULT_CONFIG } from './defaults.js';
import { KilnError } from '../errors.js';

export interface ConfigSources {
  /** Path given by --config or KILN_CONFIG; when absent, ./kiln.yaml is read if present. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Flag values as dotted keys, e.g. {'server.port': 8080}. */
  flags?: Record<string, unknown>;
}

export interface LoadedConfig {
  config: KilnConfig;
  /** The file read, if any. */
  file: string | undefined;
}

/** KILN_* variables and the key each sets. Client variables (KILN_URL, KILN_TOKEN) are not config. */
type EnvType = 'string' | 'int' | 'number' | 'boolean';
const ENV_KEYS: Record<string, { key: string; type: EnvType }> = {
  KILN_HOST: { key: 'server.host', type: 'string' },
  KILN_PORT: { key: 'server.port', type: 'int' },
  KILN_DATA_DIR: { key: 'server.dataDir', type: 'string' },
  KILN_LOG_LEVEL: { key: 'server.logLevel', type: 'string' },
  KILN_AUTH_ENABLED: { key: 'auth.enabled', type: 'boolean' },
  KILN_BODY_LIMIT_BYTES: { key: 'server.bodyLimitBytes', type: 'int' },
  KILN_CPU_TOTAL: { key: 'budget.cpuTotal', type: 'number' },
  KILN_MEMORY_TOTAL_MB: { key: 'budget.memoryTotalMb', type: 'int' },
  KILN_RUNS_CONCURRENCY: { key: 'runs.concurrency', type: 'int' },
  KILN_RUNS_QUEUE_MAX: { key: 'runs.queueMax', type: 'int' },
  KILN_DOCKER_SOCKET: { key: 'runtimes.docker.socketPath', type: 'string' },
  KILN_SESSIONS_ORIGIN: { key: 'sessions.origin', type: 'string' },
};

export function loadConfig(sources: ConfigSources = {}): LoadedConfig {
  const env = sources.env ?? process.env;
  const explicit = sources.file ?? env.KILN_CONFIG;
  const file = explicit ? resolve(explicit) : existsSync('kiln.yaml') ? resolve('kiln.yaml') : undefined;

  let merged: unknown = structuredClone(DEFAULT_CONFIG);
  if (file) {
    const fromFile = readConfigFile(file);
    const unknown = unknownKeys(ConfigSchema, fromFile, '');
    if (unknown.length > 0) {
      throw new KilnError('invalid_config', `${file}: unknown key "${unknown[0]}"`);
    }
    merged = deepMerge(merged, fromFile);
    check(merged, file);
  }
  for (const [name, { key, type }] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    setPath(merged, key, coerce(raw, type, name));
  }
  check(merged, 'environment (KILN_*)');
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) setPath(merged, key, value);
  }
  check(merged, 'command-line flags');
  return { config: merged as KilnConfig, file };
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new KilnError('invalid_config', `${file}: cannot read the config file (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (e) {
    throw new KilnError('invalid_config', `${file}: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new KilnError('invalid_config', `${file}: the top level must be a mapping of sections (server, runs, templates …)`);
  }
  return parsed as Record<string, unknown>;
}

function check(config: unknown, source: string): void {
  const first = Value.Errors(ConfigSchema, config).First();
  if (first) {
    const parts = first.path.replace(/^\//, '').split('/').map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
    const key = parts.join('.') || '(top level)';
    // A name that is no template or language name fails the record's pattern: say what names may be.
    if (parts.length === 2 && (parts[0] === 'templates' || parts[0] === 'languages') && !/^[a-z0-9][a-z0-9_+-]*$/.test(parts[1]!)) {
      throw new KilnError('invalid_config', `${source}: "${key}": ${parts[0].slice(0, -1)} names are lowercase letters, digits, - and _, starting with a letter or digit (they appear in URLs)`);
    }
    throw new KilnError('invalid_config', `${source}: "${key}" ${problem(first.schema, first.value, first.message)} (got ${JSON.stringify(first.value)})`);
  }
  const cfg = config as KilnConfig;
  for (const [name, lang] of Object.entries(cfg.languages)) {
    if (!cfg.templates[lang.template]) {
      throw new KilnError('invalid_config', `${source}: "languages.${name}.template" names unknown template "${lang.template}"`);
    }
  }
  for (const [name, t] of Object.entries(cfg.templates)) {
    if ((t.runtime === 'docker' || t.runtime === 'gvisor') && !t.image) {
      throw new KilnError('invalid_config', `${source}: "templates.${name}.image" is required for runtime ${t.runtime}`);
    }
    if ((t.command === undefined) !== (t.port === undefined)) {
      throw new KilnError('invalid_config', `${source}: "templates.${name}" needs both command and port to serve sessions, or neither`);
    }
    if (t.pool && t.pool.min > t.pool.max) {
      throw new KilnError('invalid_config', `${source}: "templates.${name}.pool.min" is larger than pool.max`);
    }
  }
}

/**
 * What is wrong with `value`, said plainly: a field that may also be null is
 * judged by its other form (not "expected union value"), and a form with a
 * `description` says what it must be like (not the regular expression).
 */
function problem(schema: TSchema, value: unknown, message: string): string {
  const forms = (schema as { anyOf?: TSchema[] }).anyOf?.filter((b) => (b as { type?: string }).type !== 'null');
  const form = forms?.length === 1 ? forms[0]! : schema;
  const description = (form as { description?: string }).description;
  if (description) return `must be ${description}`;
  const inner = form === schema ? undefined : Value.Errors(form, value).First();
  return (inner?.message ?? message).toLowerCase();
}

/** Keys present in `value` that the schema does not declare, as dotted paths. */
function unknownKeys(schema: TSchema, value: unknown, prefix: string): string[] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [];
  const s = schema as { properties?: Record<string, TSchema>; patternProperties?: Record<string, TSchema>; anyOf?: TSchema[] };
  if (s.anyOf) {
    // A key is unknown only if no object branch takes it: the branch that leaves fewest unknown says which.
    const found = s.anyOf.filter((b) => (b as { type?: string }).type === 'object').map((b) => unknownKeys(b, value, prefix));
    return found.length === 0 ? [] : found.reduce((best, keys) => (keys.length < best.length ? keys : best));
  }
  const out: string[] = [];
  for (const [k, v] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (s.properties) {
      const child = s.properties[k];
      if (!child) out.push(path);
      else out.push(...unknownKeys(child, v, path));
    } else if (s.patternProperties) {
      const child = Object.values(s.patternProperties)[0];
      if (child) out.push(...unknownKeys(child, v, path));
    }
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Keys whose value is one of several shapes (`ready: {http} | {tcp}`): an override replaces it whole. */
const REPLACED_WHOLE = new Set(['ready']);

/** Objects merge key by key; arrays, scalars and REPLACED_WHOLE keys replace. */
function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const value = Object.hasOwn(base, k) && !REPLACED_WHOLE.has(k) ? deepMerge(base[k], v) : v;
    // An own property even for `__proto__`, so validation sees the name (and refuses it) instead of it vanishing.
    Object.defineProperty(out, k, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function setPath(target: unknown, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let node = target as Record<string, unknown>;
  for (const p of parts.slice(0, -1)) {
    if (!isPlainObject(node[p])) node[p] = {};
    node = node[p] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]!] = value;
}

function coerce(raw: string, type: EnvType, name: string): unknown {
  if (type === 'string') return raw;
  if (type === 'boolean') {
    if (raw === 'true' || raw === '1') return true;
    if (raw === 'false' || raw === '0') return false;
    throw new KilnError('invalid_config', `environment: ${name}=${JSON.stringify(raw)} is not true or false`);
  }
  const n = Number(raw);
  if (!Number.isFinite(n) || (type === 'int' && !Number.isInteger(n))) {
    throw new KilnError('invalid_config', `environment: ${name}=${JSON.stringify(raw)} is not ${type === 'int' ? 'an integer' : 'a number'}`);
  }
  return n;
}

