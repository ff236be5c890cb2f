/*
 * fuzz_grpc.c -- libFuzzer target: the gRPC transport (daemon/pd_grpc_server.h) fed raw bytes as
 * a client's socket would send them: HTTP/2 framing, HPACK, flow control and the gRPC message
 * framing, request dispatch and the reply path.
 *
 * DESIGN
 *
 * The seam is the public API, unchanged: one server, made once, listens on a Unix-domain socket
 * in a temporary directory and is driven by a private libuv loop that this harness turns by hand
 * (uv_run with UV_RUN_NOWAIT). Each input is one client connection. The kernel's socket is the
 * only "real" part, and it is local and in memory; in exchange nothing in pd_grpc_server.c had to
 * change, and the accept, read (on_read -> nghttp2_session_mem_recv), flush (mem_send -> one
 * uv_write), close and free paths are all the daemon's own.
 *
 * Input: byte 0 is a control byte, the rest is the byte stream the client sends (from the HTTP/2
 * preface on). Bits 0-6 of byte 0 pick where the stream is cut in two: the first part is sent and
 * the loop runs until the server has read all of it (SIOCOUTQ on the client side is 0) and
 * answered; if bit 7 is set, the calls the handlers kept open are then finished on the live
 * connection (a reply, then OK), as the daemon's engine finishes them later from the loop thread;
 * then the second part is sent, the client half-closes, and the loop runs until the server has
 * closed the connection. What the server writes is read; only its frame headers are looked at.
 *
 * Routes on prefixd.v1.Prefixd (the others get UNIMPLEMENTED):
 *   Health      replies HealthResponse{SERVING} and finishes OK at once (the daemon's own way);
 *   Tokenize    replies a 3-id TokenizeResponse, then finishes INVALID_ARGUMENT with a message
 *               that needs percent-encoding;
 *   Stats       finishes OK without a reply (trailers-only);
 *   Generate    replies one GenerateResponse and keeps the call open (a stream in progress);
 *   Detokenize  keeps the call open without replying.
 * Kept calls record their cancel callback and are all finished when the connection is gone.
 *
 * nghttp2 and libuv are Debian's libraries, built without coverage, so libFuzzer sees only this
 * file and pd_grpc_server.c. To steer it towards what nghttp2 does with the bytes as well, the
 * frames the server writes back are parsed, and each (frame type, flags) and each error code of
 * RST_STREAM and GOAWAY sets a byte in an extra-counters section, which libFuzzer counts as
 * coverage: an input that makes the server answer in a new way is kept.
 *
 * Oracles: the sanitizers; the server closes the connection after the client's half-close
 * (otherwise: abort, a connection that would leak); every call a handler still held when the
 * connection went away had its cancel callback run, once; after each input every call is freed
 * (pd_grpc_server_open_calls == 0: a call nobody can finish any more is a leak).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "pd_grpc_server.h"
#include "prefixd/v1/prefixd.pb-c.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_grpc: check failed: %s (line %d)\n", #cond, __LINE__);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define MAX_KEPT  512
#define MAX_TURNS 200000 /* loop turns before a stuck connection is reported */

typedef struct kept_call {
  pd_grpc_call *call;
  int cancelled;
} kept_call;

static uv_loop_t loop;
static pd_grpc_server *server;
static char socket_dir[256], socket_path[300];
static kept_call kept[MAX_KEPT];
static size_t n_kept;

/* ---- what the server writes back, as coverage ------------------------------------------------ */

#define N_FRAME_COUNTERS 1024
__attribute__((
    section("__libfuzzer_extra_counters"))) static uint8_t frame_counters[N_FRAME_COUNTERS];

typedef struct frame_reader {
  uint8_t head[9];
  size_t n_head;
  uint32_t left; /* payload bytes still to come */
  uint8_t payload[8];
  uint32_t n_payload;
} frame_reader;

static void frame_hit(uint32_t a, uint32_t b) {
  uint8_t *c = &frame_counters[(a * 131u + b * 7919u) % N_FRAME_COUNTERS];
  if (*c < 255) (*c)++;
}

static void frame_done(const frame_reader *r) {
  uint8_t type = r->head[3], flags = r->head[4];
  uint32_t stream = ((uint32_t)r->head[5] << 24 | (uint32_t)r->head[6] << 16 |
                     (uint32_t)r->head[7] << 8 | r->head[8]) &
                    0x7fffffffu;
  frame_hit(type, flags | (stream ? 0x100u : 0));
  const uint8_t *p = r->payload;
  if (type == 3 && r->n_payload >= 4) /* RST_STREAM */
    frame_hit(1000 + type, (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | p[2] << 8 | p[3]);
  if (type == 7 && r->n_payload >= 8) /* GOAWAY */
    frame_hit(1000 + type, (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | p[6] << 8 | p[7]);
}

static void frames_read(frame_reader *r, const uint8_t *p, size_t n) {
  while (n) {
    if (r->n_head < 9) {
      r->head[r->n_head++] = *p++, n--;
      if (r->n_head == 9) {
        r->left = (uint32_t)r->head[0] << 16 | (uint32_t)r->head[1] << 8 | r->head[2];
        r->n_payload = 0;
        if (r->left == 0) frame_done(r), r->n_head = 0;
      }
      continue;
    }
    size_t take = n < r->left ? n : r->left;
    for (size_t i = 0; i < take && r->n_payload < sizeof r->payload; i++)
      r->payload[r->n_payload++] = p[i];
    p += take, n -= take, r->left -= (uint32_t)take;
    if (r->left == 0) frame_done(r), r->n_head = 0;
  }
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void on_cancel(pd_grpc_call *call, void *user) {
  kept_call *k = user;
  FUZZ_CHECK(k->call == call && !k->cancelled);
  k->cancelled = 1;
}

static void keep(pd_grpc_call *call) {
  if (n_kept == MAX_KEPT) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "harness: too many open calls");
    return;
  }
  kept_call *k = &kept[n_kept++];
  k->call = call;
  k->cancelled = 0;
  pd_grpc_call_on_cancel(call, on_cancel, k);
}

static void handle_health(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  Prefixd__V1__HealthResponse resp = PREFIXD__V1__HEALTH_RESPONSE__INIT;
  resp.status = PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
  FUZZ_CHECK(pd_grpc_call_reply(call, &resp.base) == 0);
  pd_grpc_call_finish(call, PD_GRPC_OK, NULL);
}

static void handle_tokenize(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  FUZZ_CHECK(req->descriptor == &prefixd__v1__tokenize_request__descriptor);
  Prefixd__V1__TokenizeResponse resp = PREFIXD__V1__TOKENIZE_RESPONSE__INIT;
  int32_t ids[3] = {1, 2, 3};
  resp.n_token_ids = 3;
  resp.token_ids = ids;
  FUZZ_CHECK(pd_grpc_call_reply(call, &resp.base) == 0);
  pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, "bad input: 100% \xe2\x82\xac\n");
}

static void handle_stats(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  pd_grpc_call_finish(call, PD_GRPC_OK, NULL);
}

static void handle_generate(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  Prefixd__V1__GenerateResponse resp = PREFIXD__V1__GENERATE_RESPONSE__INIT;
  resp.text = "Hello";
  FUZZ_CHECK(pd_grpc_call_reply(call, &resp.base) == 0);
  keep(call);
}

static void handle_detokenize(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  keep(call);
}

/* Finishes every kept call: a last reply and OK (nothing is sent for a cancelled one). */
static void finish_kept(void) {
  size_t n = n_kept;
  n_kept = 0;
  for (size_t i = 0; i < n; i++) {
    Prefixd__V1__GenerateResponse resp = PREFIXD__V1__GENERATE_RESPONSE__INIT;
    resp.text = "bye";
    resp.finish_reason = PREFIXD__V1__FINISH_REASON__FINISH_REASON_STOP;
    pd_grpc_call_on_cancel(kept[i].call, NULL, NULL);
    pd_grpc_call_reply(kept[i].call, &resp.base);
    pd_grpc_call_finish(kept[i].call, PD_GRPC_OK, NULL);
  }
}

/* ---- the server ---------------------------------------------------------------------------- */

static void remove_socket(void) {
  unlink(socket_path);
  rmdir(socket_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  signal(SIGPIPE, SIG_IGN);
  FUZZ_CHECK(uv_loop_init(&loop) == 0);
  FUZZ_CHECK(pd_grpc_server_create(&loop, &server) == 0);
  const ProtobufCServiceDescriptor *svc = &prefixd__v1__prefixd__descriptor;
  FUZZ_CHECK(pd_grpc_server_route(server, svc, "Health", handle_health, NULL) == 0);
  FUZZ_CHECK(pd_grpc_server_route(server, svc, "Tokenize", handle_tokenize, NULL) == 0);
  FUZZ_CHECK(pd_grpc_server_route(server, svc, "Stats", handle_stats, NULL) == 0);
  FUZZ_CHECK(pd_grpc_server_route(server, svc, "Generate", handle_generate, NULL) == 0);
  FUZZ_CHECK(pd_grpc_server_route(server, svc, "Detokenize", handle_detokenize, NULL) == 0);
  /* under TMPDIR (scripts/fuzz's work folder, removed even after a crash) when the socket's
   * path fits in sun_path */
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp || strlen(tmp) > 60) tmp = "/tmp";
  snprintf(socket_dir, sizeof socket_dir, "%s/pd-fuzz-grpc-XXXXXX", tmp);
  FUZZ_CHECK(mkdtemp(socket_dir) != NULL);
  snprintf(socket_path, sizeof socket_path, "%s/s", socket_dir);
  FUZZ_CHECK(pd_grpc_server_listen_unix(server, socket_path) == 0);
  atexit(remove_socket);
  return 0;
}

/* ---- the client ---------------------------------------------------------------------------- */

typedef struct client {
  int fd;
  frame_reader frames;
  int eof;         /* the server closed its end */
  int write_error; /* the server stopped reading (EPIPE, ECONNRESET) */
} client;

static int client_connect(client *c) {
  memset(c, 0, sizeof *c);
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(c->fd >= 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
  FUZZ_CHECK(connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0);
  FUZZ_CHECK(fcntl(c->fd, F_SETFL, O_NONBLOCK) == 0);
  return 0;
}

/* One turn: the loop runs once (without blocking), and what the server wrote is read. */
static void turn(client *c) {
  uv_run(&loop, UV_RUN_NOWAIT);
  char buf[65536];
  while (!c->eof) {
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n > 0) {
      frames_read(&c->frames, (const uint8_t *)buf, (size_t)n);
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) c->eof = 1;
    break;
  }
}

/* Bytes sent but not yet read by the server. */
static int unread_by_server(const client *c) {
  int n = 0;
  FUZZ_CHECK(ioctl(c->fd, SIOCOUTQ, &n) == 0);
  return n;
}

static void send_all(client *c, const uint8_t *p, size_t n) {
  size_t off = 0;
  for (int turns = 0; off < n && !c->eof && !c->write_error; turns++) {
    ssize_t w = send(c->fd, p + off, n - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += (size_t)w;
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      c->write_error = 1;
      break;
    }
    FUZZ_CHECK(turns < MAX_TURNS);
    turn(c);
  }
}

/* Runs the loop until the server has read everything sent (or closed the connection). */
static void settle(client *c) {
  for (int turns = 0;; turns++) {
    turn(c);
    if (c->eof || c->write_error || unread_by_server(c) == 0) break;
    if (turns == MAX_TURNS) {
      fprintf(stderr, "fuzz_grpc: the server stopped reading an open connection\n");
      abort();
    }
  }
  for (int i = 0; i < 3; i++) turn(c); /* let queued writes go out */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t control = data[0];
  const uint8_t *stream = data + 1;
  size_t len = size - 1, cut = (size_t)(control & 0x7f) * len / 128;

  client c;
  client_connect(&c);
  send_all(&c, stream, cut);
  settle(&c);
  if (control & 0x80) {
    finish_kept();
    settle(&c);
  }
  send_all(&c, stream + cut, len - cut);
  shutdown(c.fd, SHUT_WR);
  for (int turns = 0; !c.eof; turns++) {
    if (turns == MAX_TURNS) {
      fprintf(stderr, "fuzz_grpc: the server kept the connection open after the client left\n");
      abort();
    }
    turn(&c);
  }
  close(c.fd);
  for (size_t i = 0; i < n_kept; i++) FUZZ_CHECK(kept[i].cancelled);
  finish_kept();
  for (int i = 0; i < 3; i++) uv_run(&loop, UV_RUN_NOWAIT);
  if (pd_grpc_server_open_calls(server) != 0) {
    fprintf(stderr, "fuzz_grpc: %zu calls still open after the connection closed\n",
            pd_grpc_server_open_calls(server));
    abort();
  }
  return 0;
}
