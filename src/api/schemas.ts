/**
 * TypeBox schemas of the API contract (DESIGN.md), used for the OpenAPI
 * document at /docs. Requests are checked by the services (runs/validate.ts),
 * so one set of rules serves the HTTP API and the local CLI alike.
 */
import { Type } from '@sinclair/typebox';

export const ErrorSchema = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String() }) }, { $id: 'Error' });

const Limits = Type.Object({
  wallMs: Type.Optional(Type.Integer({ description: 'Wall-clock deadline, ms' })),
  cpuMs: Type.Optional(Type.Integer({ description: 'CPU time of all processes, ms' })),
  memoryMb: Type.Optional(Type.Integer({ description: 'Memory, MiB' })),
  pids: Type.Optional(Type.Integer({ description: 'Processes at once' })),
  outputBytes: Type.Optional(Type.Integer({ description: 'Bytes kept per output stream' })),
});

export const RunRequestSchema = Type.Object({
  language: Type.String({ description: 'A name from GET /v1/languages' }),
  files: Type.Array(
    Type.Object({ name: Type.String(), content: Type.String(), encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')])) }),
    { minItems: 1, description: 'The first file is the program' },
  ),
  stdin: Type.Optional(Type.String()),
  args: Type.Optional(Type.Array(Type.String())),
  limits: Type.Optional(Limits),
  template: Type.Optional(Type.String({ description: 'Run in another template than the language names' })),
  wait: Type.Optional(Type.Boolean({ default: true, description: 'false: answer 202 at once and follow /v1/runs/:id/events' })),
});

const Stage = Type.Object({
  stdout: Type.String(),
  stderr: Type.String(),
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.String(), Type.Null()]),
  wallMs: Type.Integer(),
  cpuMs: Type.Integer(),
  memoryKb: Type.Integer(),
  truncated: Type.Boolean(),
});

export const RunSchema = Type.Object({
  id: Type.String(),
  language: Type.String(),
  template: Type.String(),
  status: Type.Union([Type.Literal('queued'), Type.Literal('running'), Type.Literal('done')]),
  verdict: Type.Optional(Type.String({ description: 'ok, compile_error, runtime_error, timeout, memory_limit, output_limit, internal_error' })),
  compile: Type.Optional(Stage),
  run: Type.Optional(Stage),
  error: Type.Optional(Type.String()),
  createdAt: Type.String(),
  startedAt: Type.Optional(Type.String()),
  finishedAt: Type.Optional(Type.String()),
});

export const LanguageSchema = Type.Object({ name: Type.String(), version: Type.String(), template: Type.String(), compiled: Type.Boolean() });
