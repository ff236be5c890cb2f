/*
 * pd_client.c -- see pd_client.h.
 *
 * One nghttp2 client session per connection, driven synchronously: a call submits its request
 * (headers, then the body as one gRPC frame from a data provider), then alternates
 * nghttp2_session_send (our send callback writes to the socket) and a poll()ed recv() fed to
 * nghttp2_session_mem_recv until its stream closes. Response DATA is reassembled into gRPC
 * frames (5-byte prefix, then the message), each unpacked and handed to the call's callback.
 * The status comes from the trailers, or from the headers of a trailers-only answer.
 */
#include "pd_client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "pd_err.h"

#define MAX_MESSAGE (4u << 20)

typedef struct call_state {
  int32_t stream_id;
  int closed;
  uint32_t h2_error;
  const ProtobufCMessageDescriptor *resp_desc;
  pd_client_on_msg on_msg;
  void *user;
  int cancelled, bad_message;
  uint8_t *buf; /* pending response bytes: (n_buf) */
  size_t n_buf, cap_buf;
  const uint8_t *body; /* the request frame: (n_body), sent from pos */
  size_t n_body, pos;
} call_state;

struct pd_client {
  int fd;
  nghttp2_session *h2;
  char authority[256];
  char authorization[300];
  int64_t timeout_ms;
  int broken;
  int status;
  char message[512];
  call_state *call;
};

/* ---- nghttp2 callbacks ----------------------------------------------------------------------- */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *user) {
  pd_client *c = user;
  size_t done = 0;
  while (done < len) {
    ssize_t n = send(c->fd, data + done, len - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    done += (size_t)n;
  }
  return (ssize_t)len;
}

static void pct_decode(const uint8_t *v, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 1 < cap; i++) {
    if (v[i] == '%' && i + 2 < n) {
      char hex[3] = {(char)v[i + 1], (char)v[i + 2], 0};
      out[o++] = (char)strtol(hex, NULL, 16);
      i += 2;
    } else {
      out[o++] = (char)v[i];
    }
  }
  out[o] = 0;
}

static int header_cb(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
  pd_client *c = user;
  if (!c->call || frame->hd.stream_id != c->call->stream_id) return 0;
  if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
    char v[16];
    size_t n = valuelen < sizeof v - 1 ? valuelen : sizeof v - 1;
    memcpy(v, value, n);
    v[n] = 0;
    c->status = atoi(v);
  } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
    pct_decode(value, valuelen, c->message, sizeof c->message);
  }
  return 0;
}

/* Unpacks every complete gRPC frame in the buffer. */
static void drain_frames(pd_client *c, call_state *st) {
  size_t at = 0;
  while (!st->cancelled && !st->bad_message && st->n_buf - at >= 5) {
    const uint8_t *p = st->buf + at;
    uint32_t len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    if (p[0] != 0 || len > MAX_MESSAGE) {
      st->bad_message = 1;
      break;
    }
    if (st->n_buf - at < 5 + (size_t)len) break;
    ProtobufCMessage *m = protobuf_c_message_unpack(st->resp_desc, NULL, len, p + 5);
    if (!m) {
      st->bad_message = 1;
      break;
    }
    if (st->on_msg && st->on_msg(m, st->user)) st->cancelled = 1;
    protobuf_c_message_free_unpacked(m, NULL);
    at += 5 + len;
  }
  memmove(st->buf, st->buf + at, st->n_buf - at);
  st->n_buf -= at;
  if ((st->cancelled || st->bad_message) && !st->closed)
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, st->stream_id, NGHTTP2_CANCEL);
}

static int data_cb(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                   size_t len, void *user) {
  pd_client *c = user;
  call_state *st = c->call;
  if (!st || stream_id != st->stream_id || st->cancelled || st->bad_message) return 0;
  if (st->n_buf + len > st->cap_buf) {
    size_t cap = st->cap_buf ? st->cap_buf : 4096;
    while (cap < st->n_buf + len) cap *= 2;
    if (cap > 2 * (MAX_MESSAGE + 5)) {
      st->bad_message = 1;
      return 0;
    }
    uint8_t *b = realloc(st->buf, cap);
    if (!b) return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->buf = b;
    st->cap_buf = cap;
  }
  memcpy(st->buf + st->n_buf, data, len);
  st->n_buf += len;
  drain_frames(c, st);
  return 0;
}

static int stream_close_cb(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user) {
  pd_client *c = user;
  if (c->call && stream_id == c->call->stream_id) {
    c->call->closed = 1;
    c->call->h2_error = error_code;
  }
  return 0;
}

static ssize_t body_cb(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                       uint32_t *data_flags, nghttp2_data_source *source, void *user) {
  call_state *st = source->ptr;
  size_t n = st->n_body - st->pos < length ? st->n_body - st->pos : length;
  memcpy(buf, st->body + st->pos, n);
  st->pos += n;
  if (st->pos == st->n_body) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* ---- connection ------------------------------------------------------------------------------ */

static int open_socket(const char *address, char *authority, size_t cap) {
  if (!strncmp(address, "unix:", 5)) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(address + 5) == 0 || strlen(address + 5) >= sizeof sa.sun_path) return PD_EINVAL;
    strcpy(sa.sun_path, address + 5);
    snprintf(authority, cap, "localhost");
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return PD_ESYS;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
      close(fd);
      return PD_EIO;
    }
    return fd;
  }
  const char *colon = strrchr(address, ':');
  if (!colon || colon == address || !colon[1]) return PD_EINVAL;
  char host[256], port[16];
  size_t hn = (size_t)(colon - address);
  if (hn >= sizeof host || strlen(colon + 1) >= sizeof port) return PD_EINVAL;
  memcpy(host, address, hn);
  host[hn] = 0;
  snprintf(port, sizeof port, "%s", colon + 1);
  for (const char *p = port; *p; p++)
    if (*p < '0' || *p > '9') return PD_EINVAL;
  snprintf(authority, cap, "%s", address);
  if (host[0] == '[') { /* [v6]:port */
    if (hn < 3 || host[hn - 1] != ']') return PD_EINVAL;
    memmove(host, host + 1, hn - 2);
    host[hn - 2] = 0;
  }
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, port, &hints, &res)) return PD_ENOTFOUND;
  int fd = PD_EIO;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (s < 0) continue;
    if (!connect(s, ai->ai_addr, ai->ai_addrlen)) {
      int one = 1;
      setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      fd = s;
      break;
    }
    close(s);
  }
  freeaddrinfo(res);
  return fd;
}

int pd_client_connect(const char *address, const char *api_key, pd_client **out) {
  *out = NULL;
  if (!address) return PD_EINVAL;
  pd_client *c = calloc(1, sizeof *c);
  if (!c) return PD_ENOMEM;
  c->status = -1;
  if (api_key) {
    if (strlen(api_key) + 8 > sizeof c->authorization) {
      free(c);
      return PD_EINVAL;
    }
    snprintf(c->authorization, sizeof c->authorization, "Bearer %s", api_key);
  }
  int fd = open_socket(address, c->authority, sizeof c->authority);
  if (fd < 0) {
    free(c);
    return fd;
  }
  c->fd = fd;
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs)) {
    close(fd);
    free(c);
    return PD_ENOMEM;
  }
  nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
  nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_cb);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
  int rc = nghttp2_session_client_new(&c->h2, cbs, c);
  nghttp2_session_callbacks_del(cbs);
  if (rc) {
    close(fd);
    free(c);
    return PD_ENOMEM;
  }
  /* a large window: streamed tokens never wait for WINDOW_UPDATEs */
  nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24}};
  nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1);
  nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 26);
  if (nghttp2_session_send(c->h2)) {
    pd_client_close(c);
    return PD_EIO;
  }
  *out = c;
  return PD_OK;
}

void pd_client_close(pd_client *c) {
  if (!c) return;
  if (c->h2) nghttp2_session_del(c->h2);
  if (c->fd >= 0) close(c->fd);
  free(c);
}

void pd_client_set_timeout_ms(pd_client *c, int64_t ms) {
  c->timeout_ms = ms > 0 ? ms : 0;
}

int pd_client_status(const pd_client *c) {
  return c->status;
}

const char *pd_client_message(const pd_client *c) {
  return c->message;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- calls ----------------------------------------------------------------------------------- */

int pd_client_call(pd_client *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, pd_client_on_msg on_msg,
                   void *user) {
  c->status = -1;
  c->message[0] = 0;
  if (c->broken) {
    snprintf(c->message, sizeof c->message, "the connection was lost; connect again");
    return PD_EIO;
  }
  size_t n = protobuf_c_message_get_packed_size(req);
  if (n > MAX_MESSAGE) return PD_EINVAL;
  uint8_t *body = malloc(n + 5);
  if (!body) return PD_ENOMEM;
  body[0] = 0;
  body[1] = (uint8_t)(n >> 24), body[2] = (uint8_t)(n >> 16), body[3] = (uint8_t)(n >> 8);
  body[4] = (uint8_t)n;
  protobuf_c_message_pack(req, body + 5);
  call_state st = {
      .resp_desc = resp_desc, .on_msg = on_msg, .user = user, .body = body, .n_body = n + 5};
  char timeout[32];
  snprintf(timeout, sizeof timeout, "%lldm", (long long)c->timeout_ms);
#define NV(k, v) {(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
  nghttp2_nv hdrs[8] = {NV(":method", "POST"),
                        NV(":scheme", "http"),
                        NV(":path", method),
                        NV(":authority", c->authority),
                        NV("content-type", "application/grpc"),
                        NV("te", "trailers")};
  size_t nh = 6;
  if (c->timeout_ms) hdrs[nh++] = (nghttp2_nv)NV("grpc-timeout", timeout);
  if (c->authorization[0]) hdrs[nh++] = (nghttp2_nv)NV("authorization", c->authorization);
#undef NV
  nghttp2_data_provider prd = {.source = {.ptr = &st}, .read_callback = body_cb};
  st.stream_id = nghttp2_submit_request(c->h2, NULL, hdrs, nh, &prd, &st);
  if (st.stream_id < 0) {
    free(body);
    return PD_EINVAL;
  }
  c->call = &st;
  int rc = PD_OK;
  int64_t give_up = c->timeout_ms ? now_ms() + c->timeout_ms + 1000 : 0;
  uint8_t buf[65536];
  while (!st.closed) {
    if (nghttp2_session_send(c->h2)) {
      rc = PD_EIO;
      break;
    }
    if (st.closed) break; /* sending our RST_STREAM closed it */
    int wait = give_up ? (int)(give_up - now_ms()) : -1;
    if (give_up && wait <= 0) {
      rc = PD_ETIMEDOUT;
      break;
    }
    struct pollfd pfd = {c->fd, POLLIN, 0};
    int pr = poll(&pfd, 1, wait);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) {
      rc = pr == 0 ? PD_ETIMEDOUT : PD_EIO;
      break;
    }
    ssize_t got = recv(c->fd, buf, sizeof buf, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      rc = PD_EIO;
      snprintf(c->message, sizeof c->message, "the server closed the connection");
      break;
    }
    if (nghttp2_session_mem_recv(c->h2, buf, (size_t)got) < 0) {
      rc = PD_EIO;
      snprintf(c->message, sizeof c->message, "malformed HTTP/2 from the server");
      break;
    }
  }
  if (!rc) nghttp2_session_send(c->h2); /* WINDOW_UPDATEs, RST acks */
  c->call = NULL;
  free(body);
  free(st.buf);
  if (rc) {
    c->broken = 1;
    return rc;
  }
  if (st.cancelled) return PD_CLIENT_ECANCELLED;
  if (st.bad_message) {
    snprintf(c->message, sizeof c->message, "malformed response message");
    return PD_ECORRUPT;
  }
  if (c->status < 0) {
    snprintf(c->message, sizeof c->message, "the stream ended without a gRPC status (%s)",
             nghttp2_http2_strerror(st.h2_error));
    return PD_EIO;
  }
  return c->status == 0 ? PD_OK : PD_CLIENT_ESTATUS;
}

typedef struct unary_out {
  const ProtobufCMessageDescriptor *desc;
  ProtobufCMessage *msg;
} unary_out;

static int keep_one(const ProtobufCMessage *msg, void *user) {
  unary_out *u = user;
  if (u->msg) return 1; /* a unary call answered twice: refuse */
  /* re-pack and unpack: the callback's message is freed after it returns */
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *tmp = malloc(n ? n : 1);
  if (!tmp) return 1;
  protobuf_c_message_pack(msg, tmp);
  u->msg = protobuf_c_message_unpack(u->desc, NULL, n, tmp);
  free(tmp);
  return u->msg ? 0 : 1;
}

int pd_client_unary(pd_client *c, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp) {
  unary_out u = {resp_desc, NULL};
  *resp = NULL;
  int rc = pd_client_call(c, method, req, resp_desc, keep_one, &u);
  if (rc == PD_OK && !u.msg) {
    snprintf(c->message, sizeof c->message, "the server sent no response message");
    rc = PD_ECORRUPT;
  }
  if (rc) {
    if (u.msg) protobuf_c_message_free_unpacked(u.msg, NULL);
    return rc;
  }
  *resp = u.msg;
  return PD_OK;
}

typedef struct gen_cb {
  pd_client_on_generate fn;
  void *user;
} gen_cb;

static int on_generate(const ProtobufCMessage *msg, void *user) {
  gen_cb *g = user;
  return g->fn((const Prefixd__V1__GenerateResponse *)msg, g->user);
}

int pd_client_generate(pd_client *c, const Prefixd__V1__GenerateRequest *req,
                       pd_client_on_generate on_msg, void *user) {
  gen_cb g = {on_msg, user};
  return pd_client_call(c, "/prefixd.v1.Prefixd/Generate", &req->base,
                        &prefixd__v1__generate_response__descriptor, on_generate, &g);
}

typedef struct text_acc {
  char *text;
  size_t n, cap;
  unary_out final;
  int oom;
} text_acc;

static int collect(const Prefixd__V1__GenerateResponse *m, void *user) {
  text_acc *a = user;
  size_t k = m->text ? strlen(m->text) : 0;
  if (a->n + k + 1 > a->cap) {
    size_t cap = a->cap ? a->cap : 256;
    while (cap < a->n + k + 1) cap *= 2;
    char *t = realloc(a->text, cap);
    if (!t) {
      a->oom = 1;
      return 1;
    }
    a->text = t;
    a->cap = cap;
  }
  memcpy(a->text + a->n, m->text, k);
  a->n += k;
  a->text[a->n] = 0;
  if (m->finish_reason) return keep_one(&m->base, &a->final);
  return 0;
}

int pd_client_generate_text(pd_client *c, const Prefixd__V1__GenerateRequest *req, char **text,
                            Prefixd__V1__GenerateResponse **final) {
  text_acc a = {.final = {&prefixd__v1__generate_response__descriptor, NULL}};
  *text = NULL;
  if (final) *final = NULL;
  int rc = pd_client_generate(c, req, collect, &a);
  if (a.oom) rc = PD_ENOMEM;
  if (rc == PD_OK && !a.final.msg) {
    snprintf(c->message, sizeof c->message, "the stream ended without a final message");
    rc = PD_ECORRUPT;
  }
  if (rc) {
    free(a.text);
    if (a.final.msg) protobuf_c_message_free_unpacked(a.final.msg, NULL);
    return rc;
  }
  *text = a.text ? a.text : calloc(1, 1);
  if (final)
    *final = (Prefixd__V1__GenerateResponse *)a.final.msg;
  else
    protobuf_c_message_free_unpacked(a.final.msg, NULL);
  return *text ? PD_OK : PD_ENOMEM;
}

#define PD_CLIENT_UNARY(name, svc, Method, Req, Resp, desc)                                        \
  int pd_client_##name(pd_client *c, const Prefixd__V1__##Req *req, Prefixd__V1__##Resp **resp) {  \
    return pd_client_unary(c, "/prefixd.v1." svc "/" Method, &req->base, &desc,                    \
                           (ProtobufCMessage **)resp);                                             \
  }
PD_CLIENT_UNARY(tokenize, "Prefixd", "Tokenize", TokenizeRequest, TokenizeResponse,
                prefixd__v1__tokenize_response__descriptor)
PD_CLIENT_UNARY(detokenize, "Prefixd", "Detokenize", DetokenizeRequest, DetokenizeResponse,
                prefixd__v1__detokenize_response__descriptor)
PD_CLIENT_UNARY(warm, "Prefixd", "Warm", WarmRequest, WarmResponse,
                prefixd__v1__warm_response__descriptor)
PD_CLIENT_UNARY(lookup, "Prefixd", "Lookup", LookupRequest, LookupResponse,
                prefixd__v1__lookup_response__descriptor)
PD_CLIENT_UNARY(list_prefixes, "Prefixd", "ListPrefixes", ListPrefixesRequest, ListPrefixesResponse,
                prefixd__v1__list_prefixes_response__descriptor)
PD_CLIENT_UNARY(evict, "Prefixd", "Evict", EvictRequest, EvictResponse,
                prefixd__v1__evict_response__descriptor)
PD_CLIENT_UNARY(pin, "Prefixd", "Pin", PinRequest, PinResponse,
                prefixd__v1__pin_response__descriptor)
PD_CLIENT_UNARY(unpin, "Prefixd", "Unpin", UnpinRequest, UnpinResponse,
                prefixd__v1__unpin_response__descriptor)
PD_CLIENT_UNARY(stats, "Prefixd", "Stats", StatsRequest, StatsResponse,
                prefixd__v1__stats_response__descriptor)
PD_CLIENT_UNARY(health, "Prefixd", "Health", HealthRequest, HealthResponse,
                prefixd__v1__health_response__descriptor)
PD_CLIENT_UNARY(create_tenant, "Admin", "CreateTenant", CreateTenantRequest, CreateTenantResponse,
                prefixd__v1__create_tenant_response__descriptor)
PD_CLIENT_UNARY(list_tenants, "Admin", "ListTenants", ListTenantsRequest, ListTenantsResponse,
                prefixd__v1__list_tenants_response__descriptor)
PD_CLIENT_UNARY(delete_tenant, "Admin", "DeleteTenant", DeleteTenantRequest, DeleteTenantResponse,
                prefixd__v1__delete_tenant_response__descriptor)
PD_CLIENT_UNARY(set_limits, "Admin", "SetLimits", SetLimitsRequest, SetLimitsResponse,
                prefixd__v1__set_limits_response__descriptor)
PD_CLIENT_UNARY(rotate_key, "Admin", "RotateKey", RotateKeyRequest, RotateKeyResponse,
                prefixd__v1__rotate_key_response__descriptor)
PD_CLIENT_UNARY(grant_namespace, "Admin", "GrantNamespace", GrantNamespaceRequest,
                GrantNamespaceResponse, prefixd__v1__grant_namespace_response__descriptor)
PD_CLIENT_UNARY(revoke_namespace, "Admin", "RevokeNamespace", RevokeNamespaceRequest,
                RevokeNamespaceResponse, prefixd__v1__revoke_namespace_response__descriptor)
