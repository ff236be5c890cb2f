/*
 * pd_grpc_server.c -- see pd_grpc_server.h.
 *
 * Structures: the server embeds its uv_tcp_t listener; each connection embeds its uv_tcp_t
 * client handle and owns an nghttp2 session; each request stream is a pd_grpc_call attached to
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

#include "pd_err.h"

#define MAX_ROUTES  64
#define MAX_STREAMS 100

typedef struct route {
  char path[160];
  const ProtobufCMessageDescriptor *input;
  pd_grpc_handler handler;
  void *user;
} route;

struct pd_grpc_server {
  uv_tcp_t listener; /* first: the handle's data points back here */
  uv_loop_t *loop;
  route routes[MAX_ROUTES];
  int n_routes;
  int closing, open_handles;
  struct conn *conns;
};

typedef struct conn {
  uv_tcp_t tcp;
  pd_grpc_server *server;
  nghttp2_session *h2;
  struct conn *next;
  int closing;
} conn;

struct pd_grpc_call {
  conn *c;
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
  int status;
  char message[256];
  ProtobufCMessage *req;
  const ProtobufCMessageDescriptor *req_desc;
};

static void flush(conn *c);
static void conn_close(conn *c);

/* ---- calls --------------------------------------------------------------------------------- */

static void call_free(pd_grpc_call *call) {
  if (call->req) protobuf_c_message_free_unpacked(call->req, NULL);
  free(call->in);
  free(call->out);
  free(call);
}

const char *pd_grpc_call_authorization(const pd_grpc_call *c) {
  return c->authorization[0] ? c->authorization : NULL;
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

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
  pd_grpc_call *call = source->ptr;
  size_t left = call->n_out - call->out_pos, n = left < length ? left : length;
  memcpy(buf, call->out + call->out_pos, n);
  call->out_pos += n;
  if (call->out_pos == call->n_out) {
    if (!call->finished) return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    char status[16];
    snprintf(status, sizeof status, "%d", call->status);
    nghttp2_nv trailers[2] = {
        {(uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"grpc-message", (uint8_t *)call->message, 12, strlen(call->message),
         NGHTTP2_NV_FLAG_NONE}};
    nghttp2_submit_trailer(session, stream_id, trailers, call->message[0] ? 2 : 1);
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

/* Sends the response headers (once); trailers-only when the call finished with nothing sent. */
static void respond(pd_grpc_call *call) {
  if (call->responded || call->closed) return;
  call->responded = 1;
  nghttp2_session *h2 = call->c->h2;
  if (call->finished && call->n_out == 0) {
    char status[16];
    snprintf(status, sizeof status, "%d", call->status);
    nghttp2_nv hdrs[4] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"grpc-message", (uint8_t *)call->message, 12, strlen(call->message),
         NGHTTP2_NV_FLAG_NONE}};
    nghttp2_submit_response(h2, call->stream_id, hdrs, call->message[0] ? 4 : 3, NULL);
    return;
  }
  nghttp2_nv hdrs[2] = {
      {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE}};
  nghttp2_data_provider prd = {.source = {.ptr = call}, .read_callback = read_body};
  nghttp2_submit_response(h2, call->stream_id, hdrs, 2, &prd);
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
  call->req = protobuf_c_message_unpack(r->input, NULL, len, call->in + 5);
  if (!call->req) {
    char msg[200];
    snprintf(msg, sizeof msg, "malformed %s", r->input->name);
    pd_grpc_call_finish(call, PD_GRPC_INVALID_ARGUMENT, msg);
    return;
  }
  r->handler(call, call->req, r->user);
}

/* ---- nghttp2 callbacks --------------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  pd_grpc_call *call = calloc(1, sizeof *call);
  if (!call) return NGHTTP2_ERR_CALLBACK_FAILURE;
  call->c = user;
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
  if (call->n_in + len > PD_GRPC_MAX_MESSAGE + 5) {
    call->too_big = 1; /* keep reading (flow control), stop storing */
    free(call->in);
    call->in = NULL;
    call->n_in = call->cap_in = 0;
    return 0;
  }
  if (grow(&call->in, &call->cap_in, call->n_in + len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(call->in + call->n_in, data, len);
  call->n_in += len;
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
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
  if (call->finished)
    call_free(call);
  else
    call->closed = 1; /* the handler still holds it; it is freed by its finish */
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
    if (grow(&out, &cap, n + (size_t)len)) break;
    memcpy(out + n, data, (size_t)len);
    n += (size_t)len;
  }
  if (n) {
    write_req *w = malloc(sizeof *w);
    if (!w) {
      free(out);
      conn_close(c);
      return;
    }
    w->buf = uv_buf_init((char *)out, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_write)) {
      free(out);
      free(w);
      conn_close(c);
      return;
    }
  }
  if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) conn_close(c);
}

static void on_conn_closed(uv_handle_t *h) {
  conn *c = (conn *)h;
  pd_grpc_server *s = c->server;
  nghttp2_session_del(c->h2); /* runs on_stream_close for open streams */
  for (conn **p = &s->conns; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  free(c);
  if (--s->open_handles == 0 && s->closing) free(s);
}

static void conn_close(conn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  buf->base = malloc(65536);
  buf->len = buf->base ? 65536 : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)stream;
  if (nread < 0) {
    free(buf->base);
    conn_close(c);
    return;
  }
  if (nread > 0 && !c->closing) {
    ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)buf->base, (size_t)nread);
    free(buf->base);
    if (rv < 0) {
      conn_close(c);
      return;
    }
    flush(c);
    return;
  }
  free(buf->base);
}

static void on_connection(uv_stream_t *listener, int status) {
  pd_grpc_server *s = (pd_grpc_server *)listener;
  if (status < 0) return;
  conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->server = s;
  uv_tcp_init(s->loop, &c->tcp);
  s->open_handles++;
  c->next = s->conns;
  s->conns = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  int rv = nghttp2_session_server_new(&c->h2, cbs, c);
  nghttp2_session_callbacks_del(cbs);
  if (rv) {
    conn_close(c);
    return;
  }
  nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS}};
  nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  flush(c);
}

/* ---- server -------------------------------------------------------------------------------- */

int pd_grpc_server_create(uv_loop_t *loop, pd_grpc_server **out) {
  pd_grpc_server *s = calloc(1, sizeof *s);
  if (!s) return PD_ENOMEM;
  s->loop = loop;
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

int pd_grpc_server_listen_tcp(pd_grpc_server *s, const char *host, int port, int *bound_port) {
  struct sockaddr_storage addr;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr))
    return PD_EINVAL;
  uv_tcp_init(s->loop, &s->listener);
  s->open_handles++;
  int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
  if (rc) return rc == UV_EADDRINUSE ? PD_EEXIST : PD_ESYS;
  if (bound_port) {
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&name, &len);
    *bound_port = name.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&name)->sin6_port)
                                             : ntohs(((struct sockaddr_in *)&name)->sin_port);
  }
  return PD_OK;
}

static void on_listener_closed(uv_handle_t *h) {
  pd_grpc_server *s = (pd_grpc_server *)h;
  if (--s->open_handles == 0) free(s);
}

void pd_grpc_server_close(pd_grpc_server *s) {
  s->closing = 1;
  for (conn *c = s->conns; c; c = c->next) conn_close(c);
  if (s->open_handles == 0) {
    free(s);
    return;
  }
  if (uv_is_active((uv_handle_t *)&s->listener) || s->listener.loop)
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
