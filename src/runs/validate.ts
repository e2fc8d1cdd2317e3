/**
 * Checks a run request against the config: every problem is a 400 naming the
 * field. Produces what the executor needs: decoded files, resolved limits.
 */
import type { KilnConfig, LanguageConfig } from '../config/schema.js';
import { invalid, KilnError } from '../errors.js';
import { argvProblem } from '../sandbox/argv.js';
import { relativePathProblem } from '../sandbox/paths.js';
import type { ExecLimits, RunRequest } from './types.js';

export const MAX_FILES = 100;
export const MAX_ARGS = 100;
const LIMIT_KEYS = ['wallMs', 'cpuMs', 'memoryMb', 'pids', 'outputBytes'] as const;
const MIN: Record<(typeof LIMIT_KEYS)[number], number> = { wallMs: 1, cpuMs: 1, memoryMb: 4, pids: 1, outputBytes: 0 };
const REQUEST_KEYS = new Set(['language', 'files', 'stdin', 'args', 'limits', 'template', 'wait']);
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export interface PreparedRun {
  request: RunRequest;
  languageName: string;
  language: LanguageConfig;
  templateName: string;
  files: { name: string; data: Buffer }[];
  stdin: Buffer | undefined;
  args: string[];
  runLimits: ExecLimits;
  compileLimits: ExecLimits;
  wait: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

export function prepareRun(body: unknown, config: KilnConfig): PreparedRun {
  if (!isObject(body)) throw invalid('body', 'must be a JSON object');
  for (const key of Object.keys(body)) if (!REQUEST_KEYS.has(key)) throw invalid(key, 'unknown field');

  const { language, files, stdin, args, limits, template, wait } = body;
  if (language === undefined) throw invalid('language', 'is required');
  if (typeof language !== 'string') throw invalid('language', 'must be a string');
  const lang = Object.hasOwn(config.languages, language) ? config.languages[language] : undefined;
  if (!lang) throw new KilnError('unknown_language', `language: unknown language ${JSON.stringify(language)}; see GET /v1/languages`, 400);

  let templateName = lang.template;
  if (template !== undefined) {
    if (typeof template !== 'string') throw invalid('template', 'must be a string');
    if (!Object.hasOwn(config.templates, template)) throw new KilnError('unknown_template', `template: unknown template ${JSON.stringify(template)}`, 400);
    templateName = template;
  }

  if (files === undefined) throw invalid('files', 'is required');
  if (!Array.isArray(files)) throw invalid('files', 'must be an array');
  if (files.length === 0) throw invalid('files', 'must contain at least one file');
  if (files.length > MAX_FILES) throw invalid('files', `at most ${MAX_FILES} files`);
  const seen = new Set<string>();
  const decoded = files.map((f: unknown, i) => {
    const at = `files[${i}]`;
    if (!isObject(f)) throw invalid(at, 'must be an object {name, content, encoding?}');
    for (const key of Object.keys(f)) if (!['name', 'content', 'encoding'].includes(key)) throw invalid(`${at}.${key}`, 'unknown field');
    if (typeof f.name !== 'string') throw invalid(`${at}.name`, 'must be a string');
    const problem = relativePathProblem(f.name);
    if (problem) throw invalid(`${at}.name`, problem);
    if (seen.has(f.name)) throw invalid(`${at}.name`, `duplicate file name ${JSON.stringify(f.name)}`);
    seen.add(f.name);
    if (typeof f.content !== 'string') throw invalid(`${at}.content`, 'must be a string');
    const encoding = f.encoding ?? 'utf8';
    if (encoding !== 'utf8' && encoding !== 'base64') throw invalid(`${at}.encoding`, 'must be "utf8" or "base64"');
    if (encoding === 'base64' && !BASE64.test(f.content)) throw invalid(`${at}.content`, 'is not valid base64');
    return { name: f.name, data: Buffer.from(f.content, encoding) };
  });
  // The first file is the program: it takes the language's file name unless a file already has it.
  if (!seen.has(lang.file)) {
    decoded[0] = { name: lang.file, data: decoded[0]!.data };
  }
  // A name cannot be both a file and the directory of another ("a" and "a/b"): writing them would fail inside kiln.
  const names = new Set(decoded.map((f) => f.name));
  for (const [i, f] of decoded.entries()) {
    for (let cut = f.name.lastIndexOf('/'); cut > 0; cut = f.name.lastIndexOf('/', cut - 1)) {
      const dir = f.name.slice(0, cut);
      if (names.has(dir)) throw invalid(`files[${i}].name`, `${JSON.stringify(f.name)} needs a directory ${JSON.stringify(dir)}, but that is another file's name`);
    }
  }

  if (stdin !== undefined && typeof stdin !== 'string') throw invalid('stdin', 'must be a string');
  if (args !== undefined) {
    if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw invalid('args', 'must be an array of strings');
    if (args.length > MAX_ARGS) throw invalid('args', `at most ${MAX_ARGS} arguments`);
    const bad = argvProblem(args as string[]);
    if (bad) throw invalid(`args${bad.at}`, bad.problem);
  }
  if (wait !== undefined && typeof wait !== 'boolean') throw invalid('wait', 'must be true or false');

  const runLimits = { ...config.runs.defaults };
  if (limits !== undefined) {
    if (!isObject(limits)) throw invalid('limits', 'must be an object');
    for (const [key, value] of Object.entries(limits)) {
      if (!(LIMIT_KEYS as readonly string[]).includes(key)) throw invalid(`limits.${key}`, `unknown limit; one of ${LIMIT_KEYS.join(', ')}`);
      const k = key as (typeof LIMIT_KEYS)[number];
      if (typeof value !== 'number' || !Number.isInteger(value)) throw invalid(`limits.${k}`, 'must be an integer');
      if (value < MIN[k]) throw invalid(`limits.${k}`, `must be at least ${MIN[k]}`);
      if (value > config.runs.maxima[k]) throw invalid(`limits.${k}`, `must be at most ${config.runs.maxima[k]} (runs.maxima.${k})`);
      runLimits[k] = value;
    }
  }
  const compileLimits = { ...config.runs.compileDefaults, ...lang.compileLimits, outputBytes: runLimits.outputBytes };

  return {
    request: body as unknown as RunRequest,
    languageName: language,
    language: lang,
    templateName,
    files: decoded,
    stdin: stdin === undefined ? undefined : Buffer.from(stdin),
    args: (args as string[] | undefined) ?? [],
    runLimits,
    compileLimits,
    wait: wait ?? true,
  };
}
