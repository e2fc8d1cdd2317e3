/*
 * kiln-wire.node: sockets read and written from C on Node's own event loop,
 * for the proxy's fast path (./wire.ts).
 *
 *   init(onEvent, buffer)  onEvent(id, kind, value) is called for every event;
 *                          reads land in buffer (JS's, kept alive here)
 *   adopt(fd, dup) -> id   a connected (or connecting) TCP socket; dup: take
 *                          a duplicate and leave fd to its owner, else own fd
 *   read(id, on)           start or stop reading
 *   write(id, buffer) -> sent
 *                          false: some bytes wait in the wire (DRAIN follows)
 *   end(id, ms)            send what waits, then FIN; the wire reads and drops
 *                          what the peer still sends (so the kernel does not
 *                          answer it with a reset that would destroy the reply
 *                          at the peer) until the peer closes or 5 s pass. A
 *                          peer that takes none of what waits for ms is cut
 *                          off (else it would hold the fd and bytes for ever)
 *   destroy(id)            close now
 *   release(id) -> fd      stop watching and hand the fd over (nothing may wait)
 *
 * Events, each with a number: DATA (how many bytes, at the start of the read
 * buffer: JS uses or copies them before it returns, as the next read
 * overwrites them), END (the peer sent FIN), DRAIN (nothing waits any more),
 * GONE (an errno: the socket failed and is closed); END and DRAIN carry 0.
 * After end, destroy, release or GONE the wire sends no more events and its
 * id is dead to JS.
 *
 * Why: a proxied request costs Node's stream layer two reads and two writes,
 * each through a stream object, a Buffer, a write request and a callback. Here
 * the same is a poll callback and a read or write syscall, and JS is called
 * once per read with the bytes; what is done with them (the HTTP framing) stays
 * in TypeScript. Everything runs on the main thread, in libuv's poll phase.
 * scripts/setup builds it (gcc -shared against Node's headers).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

enum { EV_DATA = 1, EV_END = 2, EV_DRAIN = 3, EV_GONE = 4 };
/* OPEN: JS hears of it. ENDING: flushing before FIN. LINGER: FIN sent, dropping reads. CLOSED: handles closing. */
enum state { OPEN, ENDING, LINGER, CLOSED };
#define LINGER_MS 5000

typedef struct wire {
  uv_poll_t poll;
  /* The flush and linger deadlines, and a failed write's deferred GONE (JS never hears of a failure inside its own call). */
  uv_timer_t timer;
  uint64_t flush_ms; /* ENDING: how long the peer may take nothing of what waits */
  int fd;
  int32_t id;
  enum state state;
  int reading; /* JS wants reads */
  int eof;     /* the peer sent FIN */
  int failed;  /* errno of a failed write, reported from the timer */
  int handles; /* handles not yet closed: freed at 0 */
  char *pending;
  size_t pending_off, pending_len, pending_cap;
} wire;

static napi_env wire_env;
static napi_ref on_event;
static napi_ref read_ref;
static napi_ref global_ref; /* the receiver of every onEvent call, looked up once */
static char *read_buf;
static size_t read_size;
static napi_async_context async_context;
static uv_loop_t *loop;
static wire **wires;
static int32_t wires_cap;
static int32_t *free_ids;
static int32_t free_count;

static void emit(wire *w, int kind, int value) {
  napi_handle_scope scope;
  napi_open_handle_scope(wire_env, &scope);
  napi_value fn, global, argv[3], result;
  napi_get_reference_value(wire_env, on_event, &fn);
  napi_get_reference_value(wire_env, global_ref, &global);
  napi_create_int32(wire_env, w->id, &argv[0]);
  napi_create_int32(wire_env, kind, &argv[1]);
  napi_create_int32(wire_env, value, &argv[2]);
  /* make_callback, not call_function: process.nextTick and promises run after it, as after any I/O callback. */
  if (napi_make_callback(wire_env, async_context, global, fn, 3, argv, &result) == napi_pending_exception) {
    napi_value e;
    napi_get_and_clear_last_exception(wire_env, &e);
    napi_fatal_exception(wire_env, e);
  }
  napi_close_handle_scope(wire_env, scope);
}

static void handle_closed(uv_handle_t *h) {
  wire *w = h->data;
  if (--w->handles > 0) return;
  wires[w->id] = NULL;
  free_ids[free_count++] = w->id;
  free(w->pending);
  free(w);
}

/* Stop watching; close the fd unless it is handed over. */
static void close_wire(wire *w, int close_fd) {
  if (w->state == CLOSED) return;
  w->state = CLOSED;
  uv_close((uv_handle_t *)&w->poll, handle_closed); /* takes the fd out of epoll before it is closed */
  uv_close((uv_handle_t *)&w->timer, handle_closed);
  if (close_fd) close(w->fd);
}

/* The socket failed: closed, and JS told if it still listens. */
static void fail(wire *w, int err) {
  int told = w->state == OPEN;
  close_wire(w, 1);
  if (told) emit(w, EV_GONE, err);
}

static void on_poll(uv_poll_t *p, int status, int events);
static void timer_fired(uv_timer_t *t);

static void watch(wire *w) {
  if (w->state == CLOSED) return;
  int events = 0;
  /* Reading while ENDING too (what comes is dropped), or a level-triggered poll would report the same bytes forever. */
  if (w->state == LINGER || (w->state == ENDING && !w->eof) || (w->state == OPEN && w->reading && !w->eof)) events |= UV_READABLE;
  if (w->pending_len > w->pending_off) events |= UV_WRITABLE;
  if (events) uv_poll_start(&w->poll, events, on_poll);
  else uv_poll_stop(&w->poll);
}

/* FIN sent: from now on what comes is read and dropped until the peer closes (or the deadline). */
static void linger(wire *w) {
  if (w->eof) return close_wire(w, 1);
  shutdown(w->fd, SHUT_WR);
  w->state = LINGER;
  uv_unref((uv_handle_t *)&w->poll);
  uv_timer_start(&w->timer, timer_fired, LINGER_MS, 0);
  watch(w);
}

/* Send what waits; 0, or an errno. */
static int flush(wire *w) {
  while (w->pending_off < w->pending_len) {
    ssize_t n = send(w->fd, w->pending + w->pending_off, w->pending_len - w->pending_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? 0 : errno;
    }
    w->pending_off += (size_t)n;
  }
  w->pending_off = w->pending_len = 0;
  return 0;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  wire *w = p->data;
  int errored = status < 0;
  if (errored && w->state == OPEN && w->reading && !w->eof) {
    /* An error (a reset) may come right behind bytes not read yet, such as a server's early answer before it
       closed on an upload: read them first; recv reports the error once they are taken. libuv stopped the poll. */
    events = UV_READABLE;
    uv_poll_start(&w->poll, UV_READABLE | (w->pending_len > w->pending_off ? UV_WRITABLE : 0), on_poll);
  } else if (errored) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    return fail(w, err ? err : ECONNRESET);
  }
  if (events & UV_WRITABLE) {
    size_t waiting = w->pending_len - w->pending_off;
    int err = flush(w);
    if (err) return fail(w, err);
    if (w->state == ENDING && w->pending_len - w->pending_off < waiting) uv_timer_start(&w->timer, timer_fired, w->flush_ms, 0); /* progress */
    if (w->pending_off == w->pending_len) {
      if (w->state == ENDING) return linger(w);
      watch(w);
      if (w->state == OPEN) emit(w, EV_DRAIN, 0);
      if (w->state == CLOSED) return;
    }
  }
  if (!(events & UV_READABLE)) return;
  if (w->state == LINGER || w->state == ENDING) {
    ssize_t n = recv(w->fd, read_buf, read_size, 0);
    if (n == 0 && w->state == ENDING) w->eof = 1, watch(w); /* FIN once what waits is sent, then closed (linger) */
    else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) close_wire(w, 1);
    return;
  }
  if (w->state != OPEN || !w->reading || w->eof) return;
  ssize_t n = recv(w->fd, read_buf, read_size, 0);
  if (n > 0) {
    emit(w, EV_DATA, (int)n);
  } else if (n == 0) {
    w->eof = 1;
    watch(w);
    emit(w, EV_END, 0);
  } else if (errno != EINTR && (errno != EAGAIN || errored)) fail(w, errno == EAGAIN ? ECONNRESET : errno); /* an error with nothing to read: no spin */
}

static void timer_fired(uv_timer_t *t) {
  wire *w = t->data;
  if (w->state == LINGER || w->state == ENDING) close_wire(w, 1); /* the peer stalled: it gets no more */
  else if (w->failed) fail(w, w->failed);
}

/* ---- the JS side ---- */

static wire *arg_wire(napi_env env, napi_value v) {
  int32_t id;
  if (napi_get_value_int32(env, v, &id) != napi_ok || id < 0 || id >= wires_cap || !wires[id] || wires[id]->state == CLOSED) return NULL;
  return wires[id];
}

static napi_value args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *usage) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != want) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  return argv[0];
}

static napi_value boolean(napi_env env, int b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

static napi_value js_init(napi_env env, napi_callback_info info) {
  napi_value argv[2], name, global;
  napi_valuetype type;
  void *data;
  size_t len;
  bool is_buffer;
  if (!args(env, info, 2, argv, "init(onEvent, buffer)")) return NULL;
  if (napi_typeof(env, argv[0], &type) != napi_ok || type != napi_function || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || len == 0)
    return napi_throw_type_error(env, NULL, "init(onEvent, buffer): a function and a Buffer"), NULL;
  if (on_event) napi_delete_reference(env, on_event);
  if (read_ref) napi_delete_reference(env, read_ref);
  /* JS's Buffer, held here so its memory stays put and alive. */
  napi_create_reference(env, argv[1], 1, &read_ref);
  read_buf = data;
  read_size = len;
  if (!async_context) {
    napi_create_string_utf8(env, "kiln-wire", NAPI_AUTO_LENGTH, &name);
    napi_async_init(env, NULL, name, &async_context);
  }
  if (!global_ref) {
    napi_get_global(env, &global);
    napi_create_reference(env, global, 1, &global_ref);
  }
  wire_env = env;
  napi_create_reference(env, argv[0], 1, &on_event);
  napi_get_uv_event_loop(env, &loop);
  return NULL;
}

static napi_value js_adopt(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  bool dup;
  if (!args(env, info, 2, argv, "adopt(fd, dup)")) return NULL;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 || napi_get_value_bool(env, argv[1], &dup) != napi_ok)
    return napi_throw_type_error(env, NULL, "adopt(fd, dup): an fd and a boolean"), NULL;
  if (!on_event) return napi_throw_error(env, NULL, "adopt: init was not called"), NULL;
  if (free_count == 0) {
    int32_t cap = wires_cap ? wires_cap * 2 : 256;
    wire **ws = realloc(wires, sizeof *ws * (size_t)cap);
    int32_t *ids = ws ? realloc(free_ids, sizeof *ids * (size_t)cap) : NULL;
    if (ws) wires = ws;
    if (!ids) return napi_throw_error(env, "ENOMEM", "adopt: out of memory"), NULL;
    free_ids = ids;
    for (int32_t i = cap - 1; i >= wires_cap; i--) wires[i] = NULL, free_ids[free_count++] = i;
    wires_cap = cap;
  }
  wire *w = calloc(1, sizeof *w);
  if (!w) return napi_throw_error(env, "ENOMEM", "adopt: out of memory"), NULL;
  w->fd = dup ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : fd;
  if (w->fd < 0 || fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) | O_NONBLOCK) < 0 || uv_poll_init_socket(loop, &w->poll, w->fd) != 0) {
    int err = errno;
    if (dup && w->fd >= 0) close(w->fd);
    free(w);
    napi_throw_error(env, "EADOPT", strerror(err));
    return NULL;
  }
  uv_timer_init(loop, &w->timer);
  uv_unref((uv_handle_t *)&w->timer);
  w->poll.data = w->timer.data = w;
  w->handles = 2;
  w->id = free_ids[--free_count];
  wires[w->id] = w;
  napi_value id;
  napi_create_int32(env, w->id, &id);
  return id;
}

static napi_value js_read(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  bool on;
  if (!args(env, info, 2, argv, "read(id, on)")) return NULL;
  wire *w = arg_wire(env, argv[0]);
  if (!w || w->state != OPEN || napi_get_value_bool(env, argv[1], &on) != napi_ok) return NULL;
  if (w->reading != on) {
    w->reading = on;
    watch(w);
  }
  return NULL;
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  void *data;
  size_t len;
  if (!args(env, info, 2, argv, "write(id, buffer)")) return NULL;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) return napi_throw_type_error(env, NULL, "write(id, buffer): a Buffer"), NULL;
  wire *w = arg_wire(env, argv[0]);
  if (!w || w->state != OPEN || w->failed) return boolean(env, 0);
  size_t sent = 0;
  if (w->pending_len == w->pending_off) {
    while (sent < len) {
      ssize_t n = send(w->fd, (char *)data + sent, len - sent, MSG_NOSIGNAL);
      if (n >= 0) sent += (size_t)n;
      else if (errno == EAGAIN) break;
      else if (errno != EINTR) {
        w->failed = errno;
        uv_timer_start(&w->timer, timer_fired, 0, 0);
        return boolean(env, 0);
      }
    }
    if (sent == len) return boolean(env, 1);
  }
  /* The rest waits in the wire until the socket can take it. */
  size_t rest = len - sent, used = w->pending_len - w->pending_off;
  if (w->pending_off > 0) {
    memmove(w->pending, w->pending + w->pending_off, used);
    w->pending_off = 0;
    w->pending_len = used;
  }
  if (used + rest > w->pending_cap) {
    size_t cap = w->pending_cap ? w->pending_cap : 16384;
    while (cap < used + rest) cap *= 2;
    char *p = realloc(w->pending, cap);
    if (!p) return napi_throw_error(env, "ENOMEM", "write: out of memory"), NULL;
    w->pending = p;
    w->pending_cap = cap;
  }
  memcpy(w->pending + w->pending_len, (char *)data + sent, rest);
  w->pending_len += rest;
  watch(w);
  return boolean(env, 0);
}

static napi_value js_end(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t ms;
  if (!args(env, info, 2, argv, "end(id, ms)")) return NULL;
  if (napi_get_value_int64(env, argv[1], &ms) != napi_ok || ms < 1) return napi_throw_type_error(env, NULL, "end(id, ms): ms a positive number"), NULL;
  wire *w = arg_wire(env, argv[0]);
  if (!w || w->state != OPEN) return NULL;
  if (w->failed) return close_wire(w, 1), NULL;
  w->state = ENDING;
  if (w->pending_len == w->pending_off) return linger(w), NULL;
  w->flush_ms = (uint64_t)ms;
  uv_timer_start(&w->timer, timer_fired, w->flush_ms, 0);
  return NULL;
}

static napi_value js_destroy(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv, "destroy(id)")) return NULL;
  wire *w = arg_wire(env, argv[0]);
  if (w) close_wire(w, 1);
  return NULL;
}

static napi_value js_release(napi_env env, napi_callback_info info) {
  napi_value argv[1], fd;
  if (!args(env, info, 1, argv, "release(id)")) return NULL;
  wire *w = arg_wire(env, argv[0]);
  if (!w || w->state != OPEN || w->failed || w->pending_len > w->pending_off) return napi_throw_error(env, "ERELEASE", "release: the wire is closed or has bytes waiting"), NULL;
  int f = w->fd;
  close_wire(w, 0);
  napi_create_int32(env, f, &fd);
  return fd;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor d[] = {
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},       {"adopt", NULL, js_adopt, NULL, NULL, NULL, napi_default, NULL},
      {"read", NULL, js_read, NULL, NULL, NULL, napi_default, NULL},       {"write", NULL, js_write, NULL, NULL, NULL, napi_default, NULL},
      {"end", NULL, js_end, NULL, NULL, NULL, napi_default, NULL},         {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_default, NULL},
      {"release", NULL, js_release, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}
