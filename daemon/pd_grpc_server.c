/*
 * pd_grpc_server.c -- see pd_grpc_server.h.
 *
 * Structures: the server embeds its TCP and Unix listeners; each connection embeds its libuv
 * stream handle (TCP or pipe) and owns an nghttp2 session; each request stream is a pd_grpc_call attached to
 * its nghttp2 stream as user data. Memory is freed only in close callbacks (libuv's rule) and in
 * nghttp2's stream-close callback. Output: nghttp2_session_mem_send fills a buffer that goes out
 * in one uv_write per flush; a response body is served by a data provider reading the call's
 * output buffer, which ends with the trailers (grpc-status, grpc-message) once finished.
 */
#include "pd_grpc_server.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_h2_filter.h"
#include "pd_log.h"
#include "pd_tcp.h"
#include "pd_tls.h"

#define MAX_ROUTES         64
#define PD_GRPC_READ_BYTES 65536 /* one read from a connection */

typedef struct route {
  char path[160];
  const ProtobufCMessageDescriptor *input;
  pd_grpc_handler handler;
  void *user;
} route;

struct pd_grpc_server {
  uv_tcp_t tcp_listener; /* handle data of both listeners points back here */
  uv_pipe_t unix_listener;
  int has_tcp, has_unix;
  pd_tls_server *tls; /* the TCP listener's TLS (borrowed), or NULL: plaintext */
  uv_loop_t *loop;
  route routes[MAX_ROUTES];
  int n_routes;
  int closing, open_handles;
  size_t open_calls;
  struct conn *conns;
  size_t n_conns, max_conns; /* connections open; past max_conns new ones are closed at once */
  size_t buffered_in;        /* request body bytes held by all calls (PD_GRPC_MAX_BUFFERED) */
  /* a read buffer for when malloc fails, so a connection is read rather than dropped (one
   * suffices: the loop is one thread and each read is consumed before the next is asked for) */
  char spare_read[PD_GRPC_READ_BYTES];
  int spare_read_in_use;
  union { /* accepts and closes a connection there is no memory for */
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } reject;
  int rejecting;         /* the reject handle is closing */
  uv_stream_t *deferred; /* a listener whose connection waits for the reject handle */
};

typedef struct conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h; /* first: the handle's address is the connection's */
  pd_grpc_server *server;
  nghttp2_session *h2;
  struct conn *next;
  struct pd_grpc_call *calls; /* every call of this connection not yet freed */
  int closing;
  int handles_open; /* the stream and the timer: freed when both are closed */
  uv_timer_t timer; /* the handshake timeout, then the idle check */
  int got_frame;    /* a frame was received: the client speaks HTTP/2 */
  int64_t last_read_ms;
  double ping_tokens; /* PING rate limit: a token bucket */
  int64_t ping_refill_ms;
  pd_h2_filter filter; /* drops grpc-core's RST_STREAM for streams not yet opened */
  int is_tls;
  pd_tls_conn tls; /* when is_tls: between the socket and nghttp2 */
} conn;

struct pd_grpc_call {
  conn *c;                          /* NULL once the connection is gone */
  struct pd_grpc_call *prev, *next; /* in c->calls */
  pd_grpc_server *server;
  int32_t stream_id;
  char path[160];
  char authorization[512];
  int content_type_ok;
  uint8_t *in; /* request body (gRPC frames) */
  size_t n_in, cap_in;
  int too_big;
  uint8_t *out; /* framed response messages */
  size_t n_out, cap_out, out_pos;
  int finished, responded, closed;
  int handed;          /* given to its handler, which alone may free it (by finishing it) */
  int64_t deadline_ms; /* monotonic ms from grpc-timeout, 0 = none */
  pd_grpc_cancel_fn on_cancel;
  void *cancel_user;
  int status;
  char message[256];
  int64_t pushback_ms; /* > 0: sent as grpc-retry-pushback-ms */
  char request_id[48]; /* "" or sent as x-request-id */
  ProtobufCMessage *req;
  const ProtobufCMessageDescriptor *req_desc;
};

static void flush(conn *c);
static void conn_close(conn *c);

/* ---- calls --------------------------------------------------------------------------------- */

static void call_unlink(pd_grpc_call *call) {
  if (!call->c) return;
  if (call->prev)
    call->prev->next = call->next;
  else
    call->c->calls = call->next;
  if (call->next) call->next->prev = call->prev;
  call->prev = call->next = NULL;
}

static void call_free(pd_grpc_call *call) {
  call_unlink(call);
  call->server->open_calls--;
  call->server->buffered_in -= call->n_in;
  if (call->req) protobuf_c_message_free_unpacked(call->req, NULL);
  free(call->in);
  free(call->out);
  free(call);
}

const char *pd_grpc_call_authorization(const pd_grpc_call *c) {
  return c->authorization[0] ? c->authorization : NULL;
}

int64_t pd_grpc_call_deadline_ms(const pd_grpc_call *c) {
  return c->deadline_ms;
}

int pd_grpc_call_is_closed(const pd_grpc_call *c) {
  return c->closed;
}

void pd_grpc_call_on_cancel(pd_grpc_call *c, pd_grpc_cancel_fn fn, void *user) {
  c->on_cancel = fn;
  c->cancel_user = user;
}

int64_t pd_grpc_now_ms(void) {
  return (int64_t)(uv_hrtime() / 1000000u);
}

/* The client is gone (stream reset or connection lost) before the handler finished: the call
 * stays allocated until the handler's finish, which only frees it. */
static void call_abandon(pd_grpc_call *call) {
  call->closed = 1;
  if (call->on_cancel) {
    pd_grpc_cancel_fn fn = call->on_cancel;
    call->on_cancel = NULL;
    fn(call, call->cancel_user);
  }
}

/* grpc-timeout: 1 to 8 ASCII digits and a unit (H M S m u n). Returns ms (at least 1), or -1. */
static int64_t parse_timeout(const uint8_t *v, size_t n) {
  if (n < 2 || n > 9) return -1;
  int64_t x = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    x = x * 10 + (v[i] - '0');
  }
  int64_t ms;
  switch (v[n - 1]) {
  case 'H': ms = x * 3600000; break;
  case 'M': ms = x * 60000; break;
  case 'S': ms = x * 1000; break;
  case 'm': ms = x; break;
  case 'u': ms = x / 1000; break;
  case 'n': ms = x / 1000000; break;
  default: return -1;
  }
  return ms < 1 ? 1 : ms;
}

static int grow(uint8_t **p, size_t *cap, size_t need) {
  if (need <= *cap) return PD_OK;
  size_t ncap = *cap ? *cap : 256;
  while (ncap < need) ncap *= 2;
  uint8_t *q = realloc(*p, ncap);
  if (!q) return PD_ENOMEM;
  *p = q;
  *cap = ncap;
  return PD_OK;
}

/* The fields that end a call: grpc-status, and grpc-message and grpc-retry-pushback-ms when
 * there are. They point into sf and the call. */
typedef struct status_fields {
  nghttp2_nv nv[3];
  char status[16], pushback[24];
} status_fields;

static size_t status_fields_of(pd_grpc_call *call, status_fields *sf) {
  size_t n = 0;
  snprintf(sf->status, sizeof sf->status, "%d", call->status);
  sf->nv[n++] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)sf->status, 11,
                             strlen(sf->status), NGHTTP2_NV_FLAG_NONE};
  if (call->message[0])
    sf->nv[n++] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)call->message, 12,
                               strlen(call->message), NGHTTP2_NV_FLAG_NONE};
  if (call->pushback_ms > 0) {
    snprintf(sf->pushback, sizeof sf->pushback, "%lld", (long long)call->pushback_ms);
    sf->nv[n++] = (nghttp2_nv){(uint8_t *)"grpc-retry-pushback-ms", (uint8_t *)sf->pushback, 22,
                               strlen(sf->pushback), NGHTTP2_NV_FLAG_NONE};
  }
  return n;
}

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
  pd_grpc_call *call = source->ptr;
  size_t left = call->n_out - call->out_pos, n = left < length ? left : length;
  memcpy(buf, call->out + call->out_pos, n);
  call->out_pos += n;
  if (call->out_pos == call->n_out) {
    call->out_pos = call->n_out = 0; /* all sent: reuse the buffer from its start */
    if (!call->finished) return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    status_fields sf;
    size_t n_sf = status_fields_of(call, &sf);
    /* no memory for the trailers: nghttp2 resets the stream (INTERNAL_ERROR) rather than leave
     * it open forever */
    if (nghttp2_submit_trailer(session, stream_id, sf.nv, n_sf))
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return (ssize_t)n;
}

/* Percent-encodes what gRPC forbids in grpc-message (outside printable ASCII, and '%'). */
static void set_message(pd_grpc_call *call, const char *msg) {
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)(msg ? msg : "");
       *p && o + 4 < sizeof call->message; p++) {
    if (*p >= 0x20 && *p < 0x7f && *p != '%')
      call->message[o++] = (char)*p;
    else
      o += (size_t)snprintf(call->message + o, 4, "%%%02X", *p);
  }
  call->message[o] = 0;
}

/* A response could not be submitted (no memory): the stream is reset (INTERNAL_ERROR) so the
 * client is not left waiting; if even that fails, the connection is closed. */
static void respond_failed(pd_grpc_call *call) {
  if (nghttp2_submit_rst_stream(call->c->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                NGHTTP2_INTERNAL_ERROR))
    conn_close(call->c);
}

/* Sends the response headers (once); trailers-only when the call finished with nothing sent. */
static void respond(pd_grpc_call *call) {
  if (call->responded || call->closed) return;
  call->responded = 1;
  nghttp2_session *h2 = call->c->h2;
  nghttp2_nv hdrs[6] = {
      {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE}};
  size_t n = 2;
  if (call->request_id[0])
    hdrs[n++] = (nghttp2_nv){(uint8_t *)"x-request-id", (uint8_t *)call->request_id, 12,
                             strlen(call->request_id), NGHTTP2_NV_FLAG_NONE};
  if (call->finished && call->n_out == 0) { /* trailers-only */
    status_fields sf;
    size_t n_sf = status_fields_of(call, &sf);
    memcpy(hdrs + n, sf.nv, n_sf * sizeof *hdrs);
    if (nghttp2_submit_response(h2, call->stream_id, hdrs, n + n_sf, NULL)) respond_failed(call);
    return;
  }
  nghttp2_data_provider prd = {.source = {.ptr = call}, .read_callback = read_body};
  if (nghttp2_submit_response(h2, call->stream_id, hdrs, n, &prd)) respond_failed(call);
}

int pd_grpc_call_reply(pd_grpc_call *call, const ProtobufCMessage *msg) {
  if (call->finished) return PD_EINVAL;
  size_t n = protobuf_c_message_get_packed_size(msg);
  if (grow(&call->out, &call->cap_out, call->n_out + 5 + n)) return PD_ENOMEM;
  uint8_t *p = call->out + call->n_out;
  p[0] = 0;
  p[1] = (uint8_t)(n >> 24), p[2] = (uint8_t)(n >> 16), p[3] = (uint8_t)(n >> 8), p[4] = (uint8_t)n;
  protobuf_c_message_pack(msg, p + 5);
  call->n_out += 5 + n;
  if (!call->closed) {
    respond(call);
    nghttp2_session_resume_data(call->c->h2, call->stream_id);
    flush(call->c);
  }
  return PD_OK;
}

void pd_grpc_call_set_pushback(pd_grpc_call *c, int64_t ms) {
  c->pushback_ms = ms;
}

void pd_grpc_call_finish(pd_grpc_call *call, int status, const char *message) {
  if (call->finished) return;
  call->finished = 1;
  call->status = status;
  set_message(call, message);
  if (call->closed) { /* the client went away first: nghttp2 already forgot the stream */
    call_free(call);
    return;
  }
  conn *c = call->c;
  if (call->responded)
    nghttp2_session_resume_data(c->h2, call->stream_id);
  else
    respond(call);
  flush(c);
}

/* ---- request dispatch ---------------------------------------------------------------------- */

/* protobuf-c's allocator for requests: malloc and free (call_free frees the message with the
 * default allocator, which is the same), noting a failure so that an unpack that ran out of
 * memory is not answered as a malformed message. */
static void *unpack_alloc(void *oom, size_t n) {
  void *p = malloc(n);
  if (!p) *(int *)oom = 1;
  return p;
}

static void unpack_free(void *oom, void *p) {
  free(p);
}

static void dispatch(pd_grpc_call *call) {
  pd_grpc_server *s = call->c->server;
  const route *r = NULL;
  for (int i = 0; i < s->n_routes; i++)
    if (!strcmp(s->routes[i].path, call->path)) r = &s->routes[i];
  if (!r) {
    char msg[200];
    snprintf(msg, sizeof msg, "unknown method %s", call->path);
    pd_grpc_call_finish(call, PD_GRPC_UNIMPLEMENTED, msg);
    return;
  }
  if (call->too_big) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "request message larger than 4 MiB");
    return;
  }
  if (!call->content_type_ok) {
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, "content-type must be application/grpc");
    return;
  }
  if (call->deadline_ms < 0) {
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout");
    return;
  }
  if (call->n_in < 5) {
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, "request has no gRPC message");
    return;
  }
  uint32_t len = ((uint32_t)call->in[1] << 24) | ((uint32_t)call->in[2] << 16) |
                 ((uint32_t)call->in[3] << 8) | call->in[4];
  if (call->in[0] != 0) {
    pd_grpc_call_finish(call, PD_GRPC_UNIMPLEMENTED, "compressed messages are not supported");
    return;
  }
  if (len > PD_GRPC_MAX_MESSAGE) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "request message larger than 4 MiB");
    return;
  }
  if ((size_t)len + 5 != call->n_in) {
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT,
                        "gRPC frame length does not match the body");
    return;
  }
  int oom = 0;
  ProtobufCAllocator alloc = {unpack_alloc, unpack_free, &oom};
  call->req = protobuf_c_message_unpack(r->input, &alloc, len, call->in + 5);
  if (!call->req && oom) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (!call->req) {
    char msg[200];
    snprintf(msg, sizeof msg, "malformed %s", r->input->name);
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, msg);
    return;
  }
  call->handed = 1;
  r->handler(call, call->req, r->user);
}

/* ---- nghttp2 callbacks --------------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  pd_grpc_call *call = calloc(1, sizeof *call);
  if (!call) return NGHTTP2_ERR_CALLBACK_FAILURE;
  conn *c = user;
  call->c = c;
  call->server = c->server;
  c->server->open_calls++;
  call->next = c->calls;
  if (c->calls) c->calls->prev = call;
  c->calls = call;
  call->stream_id = frame->hd.stream_id;
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
  pd_grpc_call *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!call || frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (namelen == 5 && !memcmp(name, ":path", 5) && valuelen < sizeof call->path) {
    memcpy(call->path, value, valuelen);
    call->path[valuelen] = 0;
  } else if (namelen == 12 && !memcmp(name, "content-type", 12)) {
    call->content_type_ok = valuelen >= 16 && !memcmp(value, "application/grpc", 16);
  } else if (namelen == 12 && !memcmp(name, "grpc-timeout", 12)) {
    int64_t ms = parse_timeout(value, valuelen);
    call->deadline_ms = ms < 0 ? -1 : pd_grpc_now_ms() + ms; /* -1: malformed, refused later */
  } else if (namelen == 13 && !memcmp(name, "authorization", 13) &&
             valuelen < sizeof call->authorization) {
    memcpy(call->authorization, value, valuelen);
    call->authorization[valuelen] = 0;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user) {
  pd_grpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call || call->too_big) return 0;
  pd_grpc_server *s = call->server;
  if (call->n_in + len > PD_GRPC_MAX_MESSAGE + 5 || s->buffered_in + len > PD_GRPC_MAX_BUFFERED) {
    /* too large, or too much held for unfinished requests server-wide: keep reading (flow
     * control), stop storing; the call is answered RESOURCE_EXHAUSTED if it ever ends */
    call->too_big = 1;
    s->buffered_in -= call->n_in;
    free(call->in);
    call->in = NULL;
    call->n_in = call->cap_in = 0;
    return 0;
  }
  if (grow(&call->in, &call->cap_in, call->n_in + len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(call->in + call->n_in, data, len);
  call->n_in += len;
  s->buffered_in += len;
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  conn *c = user;
  c->got_frame = 1;
  if (frame->hd.type == NGHTTP2_PING && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    /* keepalive pings come seconds apart: a burst of 100, then 10 a second, else GOAWAY */
    int64_t now = pd_grpc_now_ms();
    c->ping_tokens += (double)(now - c->ping_refill_ms) * 0.01;
    if (c->ping_tokens > 100) c->ping_tokens = 100;
    c->ping_refill_ms = now;
    if (c->ping_tokens < 1)
      return nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
    c->ping_tokens -= 1;
  }
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    pd_grpc_call *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (call && !call->finished && !call->responded) dispatch(call);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user) {
  pd_grpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call) return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  if (call->finished || !call->handed) /* no handler holds it */
    call_free(call);
  else
    call_abandon(call); /* the handler still holds it; it is freed by its finish */
  return 0;
}

/* ---- connections --------------------------------------------------------------------------- */

typedef struct write_req {
  uv_write_t req;
  uv_buf_t buf;
} write_req;

static void on_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  free(w->buf.base);
  free(w);
}

/* What can be written at once, without a callback (a TLS alert before the close). */
static void write_now(conn *c, const uint8_t *data, size_t n) {
  if (!n) return;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
  uv_try_write(&c->h.stream, &b, 1);
}

static void flush(conn *c) {
  if (c->closing) return;
  uint8_t *out = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    const uint8_t *data;
    ssize_t len = nghttp2_session_mem_send(c->h2, &data);
    if (len < 0) {
      free(out);
      conn_close(c);
      return;
    }
    if (len == 0) break;
    if (grow(&out, &cap, n + (size_t)len)) {
      /* nghttp2 counts these bytes as sent: the connection cannot go on without them */
      free(out);
      conn_close(c);
      return;
    }
    memcpy(out + n, data, (size_t)len);
    n += (size_t)len;
  }
  if (c->is_tls) { /* the records of out, and whatever the handshake has to send */
    uint8_t *cipher = NULL;
    size_t n_cipher = 0;
    int rc = pd_tls_send(&c->tls, out, n, &cipher, &n_cipher);
    free(out);
    out = cipher;
    n = n_cipher;
    if (rc) {
      write_now(c, out, n); /* an alert, if any */
      free(out);
      conn_close(c);
      return;
    }
  }
  if (n) {
    write_req *w = malloc(sizeof *w);
    if (!w) {
      free(out);
      conn_close(c);
      return;
    }
    w->buf = uv_buf_init((char *)out, (unsigned)n);
    if (uv_write(&w->req, &c->h.stream, &w->buf, 1, on_write)) {
      free(out);
      free(w);
      conn_close(c);
      return;
    }
  }
  if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) conn_close(c);
}

static void on_conn_closed(uv_handle_t *h) {
  conn *c = h->data;
  if (--c->handles_open > 0) return; /* the other handle's close frees it */
  pd_grpc_server *s = c->server;
  /* nghttp2_session_del does not report open streams: abandon their calls here */
  while (c->calls) {
    pd_grpc_call *call = c->calls;
    call_unlink(call);
    call->c = NULL;
    if (call->finished || !call->handed)
      call_free(call);
    else
      call_abandon(call);
  }
  if (c->h2) nghttp2_session_del(c->h2);
  if (c->is_tls) pd_tls_conn_free(&c->tls);
  for (conn **p = &s->conns; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  s->n_conns--;
  free(c);
  if (--s->open_handles == 0 && s->closing) free(s);
}

static void conn_close(conn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close(&c->h.handle, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* A connection that has not sent an HTTP/2 frame within the handshake timeout is closed; one
 * with no calls and nothing read for the idle timeout gets a GOAWAY. */
static void on_conn_timer(uv_timer_t *t) {
  conn *c = t->data;
  if (c->closing) return;
  if (!c->got_frame) {
    conn_close(c);
    return;
  }
  if (!c->calls && pd_grpc_now_ms() - c->last_read_ms > PD_GRPC_IDLE_MS) {
    nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
    flush(c);
    conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_conn_timer, 30000, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  pd_grpc_server *s = ((conn *)h->data)->server;
  buf->base = malloc(PD_GRPC_READ_BYTES);
  if (!buf->base && !s->spare_read_in_use) {
    s->spare_read_in_use = 1;
    buf->base = s->spare_read;
  }
  buf->len = buf->base ? PD_GRPC_READ_BYTES : 0;
}

/* Gives back a buffer on_alloc handed out. */
static void release_read(conn *c, char *base) {
  if (base == c->server->spare_read)
    c->server->spare_read_in_use = 0;
  else
    free(base);
}

/* The filter's output goes to the connection's nghttp2 session; nonzero stops the read (a
 * protocol error, or the connection was closed by what the bytes made happen). */
static int session_recv(void *user, const uint8_t *data, size_t len) {
  conn *c = user;
  if (c->closing) return 1;
  return nghttp2_session_mem_recv(c->h2, data, len) < 0 ? 1 : 0;
}

/* Plaintext from the socket (or from TLS) through the RST_STREAM filter into nghttp2. */
static int filter_feed(void *user, const uint8_t *data, size_t len) {
  conn *c = user;
  return pd_h2_filter_feed(&c->filter, data, len, session_recv, c);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)stream;
  if (nread < 0) {
    release_read(c, buf->base);
    conn_close(c);
    return;
  }
  if (nread > 0 && !c->closing) {
    c->last_read_ms = pd_grpc_now_ms();
    int rv;
    if (c->is_tls) {
      const char *why;
      rv = pd_tls_recv(&c->tls, (const uint8_t *)buf->base, (size_t)nread, filter_feed, c, &why);
      if (rv < 0 && why)
        pd_log(PD_LOG_DEBUG, "grpc: TLS handshake or record refused", "why=\"%s\"", why);
      if (rv < 0 && !c->closing) { /* send the alert, if the session left one */
        flush(c);
        conn_close(c);
      }
    } else {
      rv = filter_feed(c, (const uint8_t *)buf->base, (size_t)nread);
    }
    release_read(c, buf->base);
    if (rv) {
      conn_close(c);
      return;
    }
    flush(c);
    return;
  }
  release_read(c, buf->base);
}

static void on_connection(uv_stream_t *listener, int status);

static void on_rejected(uv_handle_t *h) {
  pd_grpc_server *s = h->data;
  s->rejecting = 0;
  uv_stream_t *deferred = s->deferred;
  s->deferred = NULL;
  if (deferred && !s->closing) on_connection(deferred, 0); /* its turn now */
  if (--s->open_handles == 0 && s->closing) free(s);
}

/* No memory for a connection: it is accepted into the server's own handle and closed, since
 * libuv stops accepting on a listener while a connection it reported stays unaccepted. */
static void reject(pd_grpc_server *s, uv_stream_t *listener) {
  if (s->rejecting) { /* still closing the last one: this one is accepted after it */
    s->deferred = listener;
    return;
  }
  if (listener->type == UV_TCP)
    uv_tcp_init(s->loop, &s->reject.tcp);
  else
    uv_pipe_init(s->loop, &s->reject.pipe, 0);
  s->reject.handle.data = s;
  s->rejecting = 1;
  s->open_handles++;
  uv_accept(listener, &s->reject.stream);
  uv_close(&s->reject.handle, on_rejected);
}

static void on_connection(uv_stream_t *listener, int status) {
  pd_grpc_server *s = listener->data;
  if (status < 0) return;
  conn *c = s->closing ? NULL : calloc(1, sizeof *c);
  if (!c) {
    reject(s, listener);
    return;
  }
  c->server = s;
  int is_tcp = listener->type == UV_TCP;
  if (is_tcp)
    uv_tcp_init(s->loop, &c->h.tcp);
  else
    uv_pipe_init(s->loop, &c->h.pipe, 0);
  uv_timer_init(s->loop, &c->timer);
  c->h.handle.data = c->timer.data = c;
  c->handles_open = 2;
  c->last_read_ms = c->ping_refill_ms = pd_grpc_now_ms();
  c->ping_tokens = 100;
  pd_h2_filter_init(&c->filter);
  s->open_handles++;
  s->n_conns++;
  c->next = s->conns;
  s->conns = c;
  if (uv_accept(listener, &c->h.stream) || s->n_conns > s->max_conns) {
    conn_close(c); /* over the connection limit: closed at once, never a slow EMFILE loop */
    return;
  }
  if (is_tcp && s->tls) {
    if (pd_tls_conn_init(&c->tls, s->tls)) {
      conn_close(c);
      return;
    }
    c->is_tls = 1;
  }
  uv_timer_start(&c->timer, on_conn_timer, PD_GRPC_HANDSHAKE_MS, 0);
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cbs)) {
    conn_close(c);
    return;
  }
  if (nghttp2_option_new(&opt)) {
    nghttp2_session_callbacks_del(cbs);
    conn_close(c);
    return;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  /* Abuse limits: a client may not make the server queue unbounded PING/SETTINGS acks, nor
   * open and reset streams faster than PD_GRPC_RESET_BURST at once and PD_GRPC_RESET_RATE a
   * second after (HTTP/2 Rapid Reset, CVE-2023-44487); past a limit nghttp2 ends the session
   * with GOAWAY. */
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  nghttp2_option_set_max_settings(opt, 32);
  nghttp2_option_set_stream_reset_rate_limit(opt, PD_GRPC_RESET_BURST, PD_GRPC_RESET_RATE);
  int rv = nghttp2_session_server_new2(&c->h2, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv) {
    c->h2 = NULL;
    conn_close(c);
    return;
  }
  nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, PD_GRPC_MAX_STREAMS}};
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1) ||
      uv_read_start(&c->h.stream, on_alloc, on_read)) {
    conn_close(c);
    return;
  }
  if (is_tcp) uv_tcp_nodelay(&c->h.tcp, 1);
  flush(c);
}

/* ---- server -------------------------------------------------------------------------------- */

void pd_grpc_call_set_request_id(pd_grpc_call *c, const char *id) {
  snprintf(c->request_id, sizeof c->request_id, "%s", id);
}

const char *pd_grpc_status_name(int status) {
  static const char *const names[] = {"OK",
                                      "CANCELLED",
                                      "UNKNOWN",
                                      "INVALID_ARGUMENT",
                                      "DEADLINE_EXCEEDED",
                                      "NOT_FOUND",
                                      "ALREADY_EXISTS",
                                      "PERMISSION_DENIED",
                                      "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION",
                                      "ABORTED",
                                      "OUT_OF_RANGE",
                                      "UNIMPLEMENTED",
                                      "INTERNAL",
                                      "UNAVAILABLE",
                                      "DATA_LOSS",
                                      "UNAUTHENTICATED"};
  return status >= 0 && status < (int)(sizeof names / sizeof *names) ? names[status] : "UNKNOWN";
}

int pd_grpc_server_create(uv_loop_t *loop, pd_grpc_server **out) {
  pd_grpc_server *s = calloc(1, sizeof *s);
  if (!s) return PD_ENOMEM;
  s->loop = loop;
  /* connections: as many as the descriptor limit allows, keeping 64 for everything else */
  struct rlimit rl;
  s->max_conns = 1024;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    s->max_conns = rl.rlim_cur > 128 ? (size_t)rl.rlim_cur - 64 : (size_t)rl.rlim_cur / 2;
  if (s->max_conns > 65536) s->max_conns = 65536;
  *out = s;
  return PD_OK;
}

int pd_grpc_server_route(pd_grpc_server *s, const ProtobufCServiceDescriptor *svc,
                         const char *method, pd_grpc_handler handler, void *user) {
  for (unsigned i = 0; i < svc->n_methods; i++) {
    if (strcmp(svc->methods[i].name, method)) continue;
    if (s->n_routes == MAX_ROUTES) return PD_EFULL;
    route *r = &s->routes[s->n_routes++];
    snprintf(r->path, sizeof r->path, "/%s/%s", svc->name, method);
    r->input = svc->methods[i].input;
    r->handler = handler;
    r->user = user;
    return PD_OK;
  }
  return PD_ENOTFOUND;
}

int pd_grpc_server_listen_tcp(pd_grpc_server *s, const char *host, int port, pd_tls_server *tls,
                              int *bound_port) {
  if (s->has_tcp) return PD_EEXIST;
  s->tls = tls;
  int rc = pd_tcp_listen(s->loop, &s->tcp_listener, host, port, 511, on_connection, bound_port);
  if (rc != PD_EINVAL) { /* the handle is initialised: the server closes it */
    s->tcp_listener.data = s;
    s->has_tcp = 1;
    s->open_handles++;
  }
  return rc;
}

void pd_grpc_server_set_tls(pd_grpc_server *s, pd_tls_server *tls) {
  if (s->tls) s->tls = tls;
}

int pd_grpc_server_listen_unix(pd_grpc_server *s, const char *path) {
  if (s->has_unix) return PD_EEXIST;
  if (strlen(path) >= 100) return PD_EINVAL; /* sun_path */
  uv_pipe_init(s->loop, &s->unix_listener, 0);
  s->unix_listener.data = s;
  s->has_unix = 1;
  s->open_handles++;
  unlink(path); /* a stale socket from an earlier run */
  int rc = uv_pipe_bind(&s->unix_listener, path);
  if (!rc) rc = uv_listen((uv_stream_t *)&s->unix_listener, 511, on_connection);
  if (rc) return rc == UV_EADDRINUSE ? PD_EEXIST : rc == UV_EACCES ? PD_EPERM : PD_ESYS;
  return PD_OK;
}

static void on_listener_closed(uv_handle_t *h) {
  pd_grpc_server *s = h->data;
  if (--s->open_handles == 0 && s->closing) free(s);
}

void pd_grpc_server_stop_listening(pd_grpc_server *s) {
  if (s->has_tcp && !uv_is_closing((uv_handle_t *)&s->tcp_listener))
    uv_close((uv_handle_t *)&s->tcp_listener, on_listener_closed);
  if (s->has_unix && !uv_is_closing((uv_handle_t *)&s->unix_listener))
    uv_close((uv_handle_t *)&s->unix_listener, on_listener_closed);
  for (conn *c = s->conns; c; c = c->next)
    if (!c->closing && c->h2) { /* tell clients to go elsewhere; open streams still finish */
      nghttp2_submit_shutdown_notice(c->h2);
      flush(c);
    }
}

size_t pd_grpc_server_open_calls(const pd_grpc_server *s) {
  return s->open_calls;
}

void pd_grpc_server_close(pd_grpc_server *s) {
  s->closing = 1;
  pd_grpc_server_stop_listening(s);
  for (conn *c = s->conns; c; c = c->next) conn_close(c);
  if (s->open_handles == 0) free(s);
}
