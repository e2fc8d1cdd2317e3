/**
 * Embedded defaults: what `kiln serve` runs on with no config file at all.
 * The process runtime with the host's toolchains, SQLite in the data dir.
 */
import type { KilnConfig } from './schema.js';

/** The demo server baked into kiln-python:local, as a session template of an image runtime. */
const DEMO_IMAGE_SESSION = {
  image: 'kiln-python:local',
  command: ['python3', '/usr/share/kiln/demo_server.py'],
  port: 8080,
  ready: { http: '/' },
  pool: { min: 0, max: 20 },
  limits: { cpus: 0.5, memoryMb: 256, pids: 64 },
  openPath: '/',
};

export const DEFAULT_CONFIG: KilnConfig = {
  server: { host: '127.0.0.1', port: 7070, dataDir: './.kiln', bodyLimitBytes: 10 * 1024 * 1024, orphanSweepS: 30, logLevel: 'info', tls: null, corsOrigins: [], rateLimitPerMinute: 6000, trustProxy: false },
  auth: { enabled: null, jwt: null, public: { sessionsPerClient: 2, createsPerMinute: 6 } },
  budget: { cpuTotal: null, memoryTotalMb: null },
  runs: {
    concurrency: null,
    queueMax: 1000,
    defaults: { wallMs: 5000, cpuMs: 5000, memoryMb: 256, pids: 64, outputBytes: 1024 * 1024 },
    // Compilers (rustc, javac) need more room than the programs they build.
    compileDefaults: { wallMs: 30000, cpuMs: 30000, memoryMb: 1024, pids: 128, outputBytes: 1024 * 1024 },
    maxima: { wallMs: 60000, cpuMs: 60000, memoryMb: 4096, pids: 512, outputBytes: 64 * 1024 * 1024 },
    retentionDays: 30,
  },
  sandboxDefaults: { cpus: 1, memoryMb: 1024, pids: 256, diskMb: 256 },
  sessions: {
    expiryIntervalS: 5,
    stalePeriodS: 3600,
    readyTimeoutS: 30,
    // Starting an interpreter is one busy thread: one core makes a 0.5-CPU template start as fast as a 1-CPU one.
    startCpus: 1,
    holdRequestS: 10,
    idleTimeoutS: 600,
    maxDurationS: 3600,
    warnings: { idleS: 60, durationS: 600 },
    origin: null,
  },
  runtimes: {
    process: {
      uid: 65534,
      gid: 65534,
      // Only what toolchains need: no /home, /root, /var, and of /etc only
      // loader, alternatives, TLS roots and Java's config (never shadow/passwd).
      systemDirs: [
        '/usr',
        '/bin',
        '/sbin',
        '/lib',
        '/lib64',
        '/etc/alternatives',
        '/etc/ld.so.cache',
        '/etc/ld.so.conf',
        '/etc/ld.so.conf.d',
        '/etc/ssl',
        '/etc/java-17-openjdk',
        '/etc/localtime',
      ],
    },
    docker: { socketPath: '/var/run/docker.sock', ociRuntime: 'runc' },
  },
  templates: {
    host: { runtime: 'process' },
    'py-docker': { runtime: 'docker', image: 'kiln-python:local' },
    // The same image under gVisor: the sandbox's system calls meet gVisor's kernel, not the host's.
    'py-gvisor': { runtime: 'gvisor', image: 'kiln-python:local' },
    // A demo that works out of the box: a page whose WebSocket echoes, on the host's Python.
    'demo-web': {
      runtime: 'process',
      command: ['python3', '/usr/share/kiln/demo_server.py'],
      port: 8080,
      ready: { http: '/' },
      idleTimeoutS: 600,
      maxDurationS: 3600,
      pool: { min: 0, max: 20 },
      limits: { cpus: 0.5, memoryMb: 256, pids: 64 },
      openPath: '/',
      // Not public: a server with auth on should not hand sandboxes to anyone who knows the name.
      public: false,
    },
    // The same demo on the docker runtime (the server is baked into kiln-python:local).
    'demo-docker': { ...DEMO_IMAGE_SESSION, runtime: 'docker' },
    // The same demo under gVisor: each backend connection enters the sandbox through an exec relay.
    'demo-gvisor': { ...DEMO_IMAGE_SESSION, runtime: 'gvisor' },
  },
  languages: {
    python: { template: 'host', file: 'main.py', run: ['python3', 'main.py'], version: ['python3', '--version'] },
    javascript: { template: 'host', file: 'main.js', run: ['node', 'main.js'], version: ['node', '--version'] },
    typescript: {
      template: 'host',
      file: 'main.ts',
      compile: ['tsc', '--target', 'es2020', '--module', 'commonjs', '--strict', '--outDir', '.', 'main.ts'],
      run: ['node', 'main.js'],
      version: ['tsc', '--version'],
    },
    c: { template: 'host', file: 'main.c', compile: ['gcc', '-O2', '-o', 'main', 'main.c', '-lm'], run: ['./main'], version: ['gcc', '-dumpfullversion'] },
    cpp: { template: 'host', file: 'main.cpp', compile: ['g++', '-O2', '-o', 'main', 'main.cpp'], run: ['./main'], version: ['g++', '-dumpfullversion'] },
    bash: { template: 'host', file: 'main.sh', run: ['bash', 'main.sh'], version: ['bash', '-c', 'echo $BASH_VERSION'] },
    rust: { template: 'host', file: 'main.rs', compile: ['rustc', '-O', '-o', 'main', 'main.rs'], run: ['./main'], version: ['rustc', '--version'] },
    java: {
      template: 'host',
      file: 'Main.java',
      compile: ['javac', '-J-XX:+UseSerialGC', '-J-Xss1m', 'Main.java'],
      run: ['java', '-XX:+UseSerialGC', '-cp', '.', 'Main'],
      version: ['java', '-version'],
    },
    'python-docker': { template: 'py-docker', file: 'main.py', run: ['python3', 'main.py'], version: ['python3', '--version'] },
    'python-gvisor': { template: 'py-gvisor', file: 'main.py', run: ['python3', 'main.py'], version: ['python3', '--version'] },
  },
};
