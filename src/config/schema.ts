/**
 * The shape of kiln's configuration, one TypeBox schema so the file, the
 * environment and the flags are validated by the same rules. Every option has
 * its default and unit beside it.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const strict = { additionalProperties: false } as const;

export const ExecLimitsSchema = Type.Object(
  {
    /** Wall-clock deadline, ms. */
    wallMs: Type.Integer({ minimum: 1 }),
    /** CPU time of all processes, ms. */
    cpuMs: Type.Integer({ minimum: 1 }),
    /** Memory, MiB. */
    memoryMb: Type.Integer({ minimum: 4 }),
    /** Processes alive at once. */
    pids: Type.Integer({ minimum: 1 }),
    /** Bytes kept per output stream. */
    outputBytes: Type.Integer({ minimum: 0 }),
  },
  strict,
);
export type ExecLimitsConfig = Static<typeof ExecLimitsSchema>;

export const SandboxLimitsSchema = Type.Object(
  {
    cpus: Type.Number({ exclusiveMinimum: 0 }),
    memoryMb: Type.Integer({ minimum: 4 }),
    pids: Type.Integer({ minimum: 1 }),
    /** Size cap of the work dir and of /tmp, MiB each. */
    diskMb: Type.Integer({ minimum: 1 }),
  },
  strict,
);

export const TemplateSchema = Type.Object(
  {
    runtime: Type.Union([Type.Literal('process'), Type.Literal('docker'), Type.Literal('gvisor')]),
    /** docker, gvisor: image to run (built locally; never pulled). */
    image: Type.Optional(Type.String({ minLength: 1 })),
    /** process: a root filesystem directory to use instead of the host's system dirs. */
    rootfs: Type.Optional(Type.String({ minLength: 1 })),
    /** Environment for every command in the sandbox. */
    env: Type.Optional(Type.Record(Type.String(), Type.String())),
    /** Environment like `env`, but secret: shown as *** by `kiln config`, never in logs, listings or errors. */
    secretEnv: Type.Optional(Type.Record(Type.String(), Type.String())),
    /** Sandbox limits; unset fields come from `sandboxDefaults`. */
    limits: Type.Optional(Type.Partial(SandboxLimitsSchema)),
    /** Session server: the command started in every sandbox of this template. */
    command: Type.Optional(Type.Array(Type.String(), { minItems: 1 })),
    /** Port the server listens on inside the sandbox (reached only through kiln's proxy). */
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    /** Readiness: an HTTP path answering below 500, or a TCP connect. Default { tcp: true }. */
    ready: Type.Optional(Type.Union([Type.Object({ http: Type.String({ pattern: '^/\\S*$' }) }, strict), Type.Object({ tcp: Type.Literal(true) }, strict)])),
    /** Seconds without requests or open sockets before a session ends (stopReason idle). */
    idleTimeoutS: Type.Optional(Type.Integer({ minimum: 1 })),
    /** Seconds a session may live at most (stopReason max_duration). */
    maxDurationS: Type.Optional(Type.Integer({ minimum: 1 })),
    /** Seconds before idle timeout / max duration at which a `warning` event is sent. */
    warnings: Type.Optional(Type.Object({ idleS: Type.Optional(Type.Integer({ minimum: 0 })), durationS: Type.Optional(Type.Integer({ minimum: 0 })) }, strict)),
    /** Warm pool: `min` ready sandboxes kept; at most `max` sandboxes of this template at once. */
    pool: Type.Optional(Type.Object({ min: Type.Integer({ minimum: 0 }), max: Type.Integer({ minimum: 1 }) }, strict)),
    /** Path a deep link (/open/<template>) lands on. Default /. */
    openPath: Type.Optional(Type.String({ pattern: '^/' })),
    /** Deep links need no credentials (classroom use). Default false. */
    public: Type.Optional(Type.Boolean()),
    /** `strip`: the server sees paths without /s/<token> (default); `keep`: it sees them whole (apps with a base URL setting). */
    basePath: Type.Optional(Type.Union([Type.Literal('strip'), Type.Literal('keep')])),
  },
  strict,
);
export type TemplateConfig = Static<typeof TemplateSchema>;

export const LanguageSchema = Type.Object(
  {
    /** Template whose sandbox runs this language. */
    template: Type.String({ minLength: 1 }),
    /** Name the first submitted file is given when the request names it otherwise. */
    file: Type.String({ minLength: 1 }),
    /** Compile stage command; absent for interpreted languages. */
    compile: Type.Optional(Type.Array(Type.String(), { minItems: 1 })),
    /** Run stage command; request `args` are appended. */
    run: Type.Array(Type.String(), { minItems: 1 }),
    /** Command printing the toolchain version, run once in the sandbox. */
    version: Type.Optional(Type.Array(Type.String(), { minItems: 1 })),
    /** Limits of the compile stage (default `runs.compileDefaults`). */
    compileLimits: Type.Optional(Type.Partial(ExecLimitsSchema)),
    /** Extra environment for both stages. */
    env: Type.Optional(Type.Record(Type.String(), Type.String())),
  },
  strict,
);
export type LanguageConfig = Static<typeof LanguageSchema>;

export const ConfigSchema = Type.Object(
  {
    server: Type.Object(
      {
        /** Address to listen on. Default 127.0.0.1. */
        host: Type.String({ minLength: 1 }),
        /** TCP port. Default 7070. */
        port: Type.Integer({ minimum: 0, maximum: 65535 }),
        /** Where the store, sandboxes and instance id live. Default ./.kiln */
        dataDir: Type.String({ minLength: 1 }),
        /** Largest request body, bytes. Default 10 MiB. */
        bodyLimitBytes: Type.Integer({ minimum: 1024 }),
        /**
         * Seconds between sweeps for sandboxes of this instance that nothing owns
         * (a create the engine finished after a crash). Default 30.
         */
        orphanSweepS: Type.Number({ exclusiveMinimum: 0 }),
        /** pino log level. Default info. */
        logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l))),
        /** HTTPS: PEM files of the certificate (chain) and its key. null = plain HTTP. */
        tls: Nullable(Type.Object({ cert: Type.String({ minLength: 1 }), key: Type.String({ minLength: 1 }) }, strict)),
        /** Browser origins allowed to call the API (CORS), e.g. https://app.example.org. Default none. */
        corsOrigins: Type.Array(Type.String({ pattern: '^https?://[^/]+$' })),
        /** API requests per minute per client (token, or address when anonymous); 0 = no limit. */
        rateLimitPerMinute: Type.Integer({ minimum: 0 }),
        /** Take the client address from X-Forwarded-For (only behind a proxy you run). Default false. */
        trustProxy: Type.Boolean(),
      },
      strict,
    ),
    auth: Type.Object(
      {
        /**
         * Require credentials on the API. null (default) = on unless the server
         * listens on loopback only. false on a non-loopback address is refused.
         */
        enabled: Nullable(Type.Boolean()),
        /** JWTs signed by your own app. null = API tokens only. */
        jwt: Nullable(
          Type.Object(
            {
              algorithm: Type.Union([Type.Literal('HS256'), Type.Literal('RS256'), Type.Literal('ES256')]),
              /** HS256: a file holding the shared secret (at least 32 bytes). Env KILN_JWT_SECRET also works. */
              secretFile: Type.Optional(Type.String({ minLength: 1 })),
              /** RS256/ES256: the PEM public key (SPKI) file. */
              publicKeyFile: Type.Optional(Type.String({ minLength: 1 })),
              /** Required `iss` / `aud` claims, when set. */
              issuer: Type.Optional(Type.String({ minLength: 1 })),
              audience: Type.Optional(Type.String({ minLength: 1 })),
            },
            strict,
          ),
        ),
        /** Anonymous users of public templates' deep links, per client address. */
        public: Type.Object(
          {
            /** Sessions one address may hold at once. */
            sessionsPerClient: Type.Integer({ minimum: 0 }),
            /** Sessions one address may create per minute. */
            createsPerMinute: Type.Integer({ minimum: 0 }),
          },
          strict,
        ),
      },
      strict,
    ),
    budget: Type.Object(
      {
        /** CPUs this node may hand out; null = the machine's. */
        cpuTotal: Nullable(Type.Number({ exclusiveMinimum: 0 })),
        /** Memory this node may hand out, MiB; null = the machine's. */
        memoryTotalMb: Nullable(Type.Integer({ minimum: 1 })),
      },
      strict,
    ),
    runs: Type.Object(
      {
        /** Runs executing at once; null = number of CPUs. */
        concurrency: Nullable(Type.Integer({ minimum: 1 })),
        /** Runs waiting; past it, 429 with Retry-After. */
        queueMax: Type.Integer({ minimum: 0 }),
        /** Limits of the run stage when a request gives none. */
        defaults: ExecLimitsSchema,
        /** Limits of the compile stage when a language gives none. */
        compileDefaults: ExecLimitsSchema,
        /** Highest limits a request may ask for; above is a 400. */
        maxima: ExecLimitsSchema,
        /** Finished runs kept in the store, days. */
        retentionDays: Type.Integer({ minimum: 1 }),
      },
      strict,
    ),
    /** Sandbox limits of templates that set none. */
    sandboxDefaults: SandboxLimitsSchema,
    sessions: Type.Object(
      {
        /** Seconds between sweeps for idle and expired sessions. */
        expiryIntervalS: Type.Number({ exclusiveMinimum: 0 }),
        /** Seconds a stopped session stays in listings (it stays in the store). */
        stalePeriodS: Type.Integer({ minimum: 0 }),
        /** Seconds a server may take to become ready. */
        readyTimeoutS: Type.Integer({ minimum: 1 }),
        /**
         * CPU cap (cores) of a session's server until it is ready, when above the
         * template's `limits.cpus` (process runtime). 0: the template's cap from the start.
         */
        startCpus: Type.Number({ minimum: 0 }),
        /** Seconds a browser request waits for a starting session before a reload page. */
        holdRequestS: Type.Integer({ minimum: 0 }),
        /** Lifecycle of templates that set none. */
        idleTimeoutS: Type.Integer({ minimum: 1 }),
        maxDurationS: Type.Integer({ minimum: 1 }),
        warnings: Type.Object({ idleS: Type.Integer({ minimum: 0 }), durationS: Type.Integer({ minimum: 0 }) }, strict),
        /**
         * Give each session an origin of its own: `https://*.sessions.example.org`
         * serves a session at `https://<session id>.sessions.example.org/` (a
         * wildcard DNS name and certificate that reach kiln). null (default):
         * sessions share kiln's origin, at `/s/<token>/`.
         */
        origin: Nullable(
          Type.String({
            pattern: '^https?://\\*\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$',
            description: 'like https://*.sessions.example.org (lower case, a port may follow, no path)',
          }),
        ),
      },
      strict,
    ),
    runtimes: Type.Object(
      {
        process: Type.Object(
          {
            /** Host uid/gid the sandboxed code runs as (never root). Default 65534 (nobody). */
            uid: Type.Integer({ minimum: 1 }),
            gid: Type.Integer({ minimum: 1 }),
            /** Host dirs bound read-only into sandboxes of templates without a rootfs. */
            systemDirs: Type.Array(Type.String({ minLength: 1 })),
          },
          strict,
        ),
        docker: Type.Object(
          {
            /** Docker Engine socket. Default /var/run/docker.sock */
            socketPath: Type.String({ minLength: 1 }),
            /** OCI runtime for the docker driver. Default runc. */
            ociRuntime: Type.String({ minLength: 1 }),
          },
          strict,
        ),
      },
      strict,
    ),
    templates: Type.Record(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]*$' }), TemplateSchema, { additionalProperties: false }),
    languages: Type.Record(Type.String({ pattern: '^[a-z0-9][a-z0-9_+-]*$' }), LanguageSchema, { additionalProperties: false }),
  },
  strict,
);
export type KilnConfig = Static<typeof ConfigSchema>;
