/*
 * kiln-spawn.node: spawn(file, argv, env, stdinPipe, onExit) -> [pid, stdin, stdout, stderr, status]
 *
 * A Node addon (plain N-API, no dependency) that starts the launcher of every
 * process-runtime exec with posix_spawn. glibc's posix_spawn is a vfork-style
 * clone: the child shares kiln's memory until it execs, so starting it costs
 * the same whatever kiln's size. node's child_process.spawn forks (libuv 1.46),
 * copying kiln's page tables while its event loop waits: 4 ms at 45 MB of RSS,
 * 9 ms at 145 MB, 14 ms at 450 MB on a 2-core VM. Every sandbox start and exec
 * paid that, and every proxied request in flight waited for it.
 *
 * The child gets pipes as fds 0 (or /dev/null), 1, 2 and 3 (the status fd
 * bwrap writes to) and no other fd; kiln gets the other ends, close-on-exec,
 * and wraps them in net.Sockets. Signals start at their defaults and unblocked
 * in the child, as node's spawn does.
 *
 * Exit: a small thread per child (all signals blocked) waits with WNOWAIT,
 * so the child stays a zombie (its pid not reusable) until the main thread
 * reaps it just before calling onExit(code, signal). Until then a kill by pid
 * cannot reach another process. libuv reaps only the pids it spawned, never
 * these. Main thread only: a worker's teardown would free the threadsafe
 * functions its waiter threads still hold (launch.ts refuses workers).
 * scripts/setup builds it (gcc -shared against Node's headers).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The most argv or env entries one spawn takes (execve's own limit, E2BIG, usually comes first). */
#define MAX_STRINGS 65536
/* Child ends are moved above this before the dup2s, so none of them is clobbered by another's dup2. */
#define HIGH_FD 10

/*
 * glibc's sigfillset leaves out its two internal signals (32 and 33), and
 * posix_spawn then sets them to SIG_IGN in the child, which lasts across
 * exec. Their bits are set by hand so that they start at SIG_DFL too, as every
 * other signal does (and as they did under node's spawn).
 */
static void add_any_signal(sigset_t *set, int sig) {
  unsigned long *words = (unsigned long *)set;
  const int bits = 8 * (int)sizeof *words;
  words[(sig - 1) / bits] |= 1UL << ((sig - 1) % bits);
}

struct child {
  pid_t pid;
  napi_threadsafe_function on_exit;
  /* Set by the waiter: whether waitid saw the exit, and what it saw. */
  bool waited;
  siginfo_t info;
};

static napi_value throw_errno(napi_env env, const char *what, const char *file, int err) {
  char msg[4400];
  snprintf(msg, sizeof msg, "%s%s%s: %s", what, file ? " " : "", file ? file : "", strerror(err));
  napi_throw_error(env, err == ENOENT ? "ENOENT" : err == EACCES ? "EACCES" : "ESPAWN", msg);
  return NULL;
}

/* On the main thread: tell JavaScript how the child ended, reaping it first. */
static void call_on_exit(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  struct child *c = data;
  /* A zombie by now (the waiter saw it exit): the reap cannot block. If waitid failed, nothing is reaped. */
  if (c->waited) waitpid(c->pid, NULL, WNOHANG);
  if (env != NULL && js_cb != NULL) {
    napi_value args[2], global;
    napi_get_null(env, &args[0]);
    napi_get_null(env, &args[1]);
    if (c->waited && c->info.si_code == CLD_EXITED) napi_create_int32(env, c->info.si_status, &args[0]);
    else if (c->waited && (c->info.si_code == CLD_KILLED || c->info.si_code == CLD_DUMPED)) napi_create_int32(env, c->info.si_status, &args[1]);
    napi_get_global(env, &global);
    napi_call_function(env, global, js_cb, 2, args, NULL);
  }
  free(c);
}

/* The waiter thread: blocks until the child has ended, without reaping it, then hands it to the main thread. */
static void *wait_child(void *arg) {
  struct child *c = arg;
  napi_threadsafe_function tsfn = c->on_exit; /* c is the main thread's once handed over */
  int r;
  do r = waitid(P_PID, (id_t)c->pid, &c->info, WEXITED | WNOWAIT);
  while (r != 0 && errno == EINTR);
  c->waited = r == 0;
  napi_call_threadsafe_function(tsfn, c, napi_tsfn_blocking);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

static void free_vector(char **v) {
  if (v == NULL) return;
  for (char **p = v; *p != NULL; p++) free(*p);
  free(v);
}

/* Copies a JS array of strings into a NULL-terminated, malloc'd vector; NULL (and a thrown error) on failure. */
static char **string_vector(napi_env env, napi_value array, const char *name) {
  bool is_array = false;
  uint32_t n = 0;
  char msg[80];
  if (napi_is_array(env, array, &is_array) != napi_ok || !is_array || napi_get_array_length(env, array, &n) != napi_ok || n > MAX_STRINGS) {
    snprintf(msg, sizeof msg, "spawn: %s must be an array of at most %d strings", name, MAX_STRINGS);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char **v = calloc((size_t)n + 1, sizeof *v);
  if (v == NULL) {
    napi_throw_error(env, "ENOMEM", "spawn: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value item;
    size_t len = 0;
    bool ok = napi_get_element(env, array, i, &item) == napi_ok && napi_get_value_string_utf8(env, item, NULL, 0, &len) == napi_ok;
    if (ok && (v[i] = malloc(len + 1)) == NULL) {
      napi_throw_error(env, "ENOMEM", "spawn: out of memory");
      free_vector(v);
      return NULL;
    }
    if (!ok || napi_get_value_string_utf8(env, item, v[i], len + 1, &len) != napi_ok || strlen(v[i]) != len) {
      snprintf(msg, sizeof msg, "spawn: %s[%u] must be a string without NUL", name, i);
      napi_throw_type_error(env, NULL, msg);
      free_vector(v);
      return NULL;
    }
  }
  return v;
}

/* Closes kiln's ends of the pipes (the spawn failed). */
static void close_ours(int ends[4][2]) {
  for (int i = 0; i < 4; i++)
    if (ends[i][1] >= 0) close(ends[i][1]);
}

static napi_value spawn_child(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5) {
    napi_throw_type_error(env, NULL, "spawn(file, argv, env, stdinPipe, onExit): five arguments");
    return NULL;
  }
  char file[4096];
  size_t file_len = 0;
  bool stdin_pipe = false;
  napi_valuetype cb_type;
  if (napi_get_value_string_utf8(env, argv[0], file, sizeof file, &file_len) != napi_ok || file_len == 0 || file_len >= sizeof file - 1 || strlen(file) != file_len ||
      napi_get_value_bool(env, argv[3], &stdin_pipe) != napi_ok || napi_typeof(env, argv[4], &cb_type) != napi_ok || cb_type != napi_function) {
    napi_throw_type_error(env, NULL, "spawn(file, argv, env, stdinPipe, onExit): a path, two string arrays, a boolean and a function");
    return NULL;
  }
  char **child_argv = string_vector(env, argv[1], "argv");
  if (child_argv == NULL) return NULL;
  char **child_env = string_vector(env, argv[2], "env");
  if (child_env == NULL) {
    free_vector(child_argv);
    return NULL;
  }

  /* ends[i][0] is the child's end of fd i, ends[i][1] kiln's; fd 0's pipe runs the other way. */
  int ends[4][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 }, { -1, -1 } };
  int err = 0;
  const char *what = "pipe";
  for (int i = stdin_pipe ? 0 : 1; i < 4 && err == 0; i++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
      err = errno;
      break;
    }
    ends[i][0] = i == 0 ? p[0] : p[1];
    ends[i][1] = i == 0 ? p[1] : p[0];
    int high = fcntl(ends[i][0], F_DUPFD_CLOEXEC, HIGH_FD);
    if (high < 0) err = errno;
    else {
      close(ends[i][0]);
      ends[i][0] = high;
    }
  }

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  sigset_t all, none;
  sigfillset(&all);
  for (int sig = 1; sig < SIGRTMIN; sig++) add_any_signal(&all, sig);
  sigemptyset(&none);
  pid_t pid = -1;
  if (err == 0) {
    what = "posix_spawn";
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    /* Every action must be recorded (they fail only with ENOMEM): a spawn without one would fail open. */
    if (!stdin_pipe) err = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    for (int i = stdin_pipe ? 0 : 1; i < 4 && err == 0; i++) err = posix_spawn_file_actions_adddup2(&actions, ends[i][0], i);
    /* Nothing else: an fd kiln inherited without close-on-exec (from a shell, a supervisor) must not reach a sandbox. */
    if (err == 0) err = posix_spawn_file_actions_addclosefrom_np(&actions, 4);
    if (err == 0) err = posix_spawnattr_setsigdefault(&attr, &all);
    if (err == 0) err = posix_spawnattr_setsigmask(&attr, &none);
    if (err == 0) err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    if (err == 0) err = posix_spawn(&pid, file, &actions, &attr, child_argv, child_env);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  free_vector(child_argv);
  free_vector(child_env);
  for (int i = 0; i < 4; i++)
    if (ends[i][0] >= 0) close(ends[i][0]);
  if (err != 0) {
    close_ours(ends);
    return throw_errno(env, what, file, err);
  }

  /* From here the child runs: a failure below kills and reaps it, and the spawn fails. */
  struct child *c = calloc(1, sizeof *c);
  napi_value name;
  napi_create_string_utf8(env, "kiln-spawn exit", NAPI_AUTO_LENGTH, &name);
  if (c == NULL || napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, NULL, call_on_exit, &c->on_exit) != napi_ok) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    free(c);
    close_ours(ends);
    return throw_errno(env, "spawn: cannot watch the child", NULL, ENOMEM);
  }
  c->pid = pid;
  pthread_attr_t ta;
  pthread_t thread;
  pthread_attr_init(&ta);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  /* The waiter inherits this mask: no process-directed signal is ever handled on its small stack. */
  sigset_t old_mask;
  pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  err = pthread_create(&thread, &ta, wait_child, c);
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  pthread_attr_destroy(&ta);
  if (err != 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    napi_release_threadsafe_function(c->on_exit, napi_tsfn_abort);
    free(c);
    close_ours(ends);
    return throw_errno(env, "spawn: cannot start a thread to wait for the child", NULL, err);
  }

  napi_value result, v;
  napi_create_array_with_length(env, 5, &result);
  napi_create_int32(env, pid, &v);
  napi_set_element(env, result, 0, v);
  for (int i = 0; i < 4; i++) {
    napi_create_int32(env, ends[i][1], &v);
    napi_set_element(env, result, (uint32_t)i + 1, v);
  }
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "spawn", NAPI_AUTO_LENGTH, spawn_child, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "spawn", fn) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
