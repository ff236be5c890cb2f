/*
 * pd_client.c -- see pd_client.h.
 *
 * One nghttp2 client session per connection, driven synchronously: a call submits its request
 * (headers, then the body as one gRPC frame from a data provider), then alternates
 * nghttp2_session_send (our send callback writes to the socket) and a poll()ed recv() fed to
 * nghttp2_session_mem_recv until its stream closes. Over TLS the same, through OpenSSL on the
 * blocking socket: SSL_write in the send callback, SSL_read after poll (or at once while OpenSSL
 * holds decrypted bytes), with auto-retry off so that a record carrying no data (a TLS 1.3
 * session ticket) returns to poll and its deadline instead of blocking. Response DATA is reassembled into gRPC
 * frames (5-byte prefix, then the message), each unpacked and handed to the call's callback.
 * The status comes from the trailers, or from the headers of a trailers-only answer.
 */
#include "pd_client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdint.h>
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
  SSL_CTX *tls_ctx; /* all three NULL: plaintext */
  SSL *tls;
  BIO_METHOD *tls_bio; /* the socket's BIO for tls: send with MSG_NOSIGNAL (no SIGPIPE) */
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
    if (c->tls) {
      size_t chunk = len - done > (1u << 30) ? (1u << 30) : len - done;
      int w = SSL_write(c->tls, data + done, (int)chunk);
      if (w <= 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
      done += (size_t)w;
      continue;
    }
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

/* Connects to address; the :authority to send goes to authority (cap bytes), the host name or IP
 * address a TCP address names (without an IPv6 literal's brackets; "" for a Unix socket) to host
 * (256 bytes). Returns the socket, or a PD_E* code. */
static int open_socket(const char *address, char *authority, size_t cap, char host[256]) {
  host[0] = 0;
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
  char port[16];
  size_t hn = (size_t)(colon - address);
  if (hn >= 256 || strlen(colon + 1) >= sizeof port) return PD_EINVAL;
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

/* The reason of OpenSSL's oldest queued error, or fallback; the queue is cleared. */
static const char *ssl_reason(const char *fallback) {
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : fallback;
}

/* A BIO on the blocking socket whose writes never raise SIGPIPE (OpenSSL's socket BIO uses
 * write(); a library must not change the process's signal dispositions). Its data is the fd. */
static int sock_bio_write(BIO *b, const char *data, int len) {
  BIO_clear_retry_flags(b);
  for (;;) {
    ssize_t n = send((int)(intptr_t)BIO_get_data(b), data, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -1 : (int)n;
  }
}

static int sock_bio_read(BIO *b, char *out, int len) {
  BIO_clear_retry_flags(b);
  for (;;) {
    ssize_t n = recv((int)(intptr_t)BIO_get_data(b), out, (size_t)len, 0);
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -1 : (int)n; /* 0: the peer closed */
  }
}

static long sock_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* every write is already on the socket */
}

static int sock_bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* The TLS handshake on c->fd, connected to host (open_socket's) for address (named in errors):
 * the server's certificate is checked against tls's CA file (NULL: the system's roots) and host,
 * and tls's client certificate, if any, is presented. */
static int start_tls(pd_client *c, const char *address, const char *host, const pd_client_tls *tls,
                     char *err, size_t errlen) {
  const char *ca_file = tls ? tls->ca_file : NULL;
  ERR_clear_error();
  c->tls_ctx = SSL_CTX_new(TLS_client_method());
  if (!c->tls_ctx) return pd_errf(err, errlen, PD_ENOMEM, "cannot create a TLS context");
  SSL_CTX_set_min_proto_version(c->tls_ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(c->tls_ctx, SSL_VERIFY_PEER, NULL);
  if ((ca_file ? SSL_CTX_load_verify_locations(c->tls_ctx, ca_file, NULL)
               : SSL_CTX_set_default_verify_paths(c->tls_ctx)) != 1)
    return pd_errf(err, errlen, PD_EIO, "cannot load the CA certificates %s: %s",
                   ca_file ? ca_file : "of the system", ssl_reason("unreadable"));
  if (tls && (!tls->cert_file != !tls->key_file))
    return pd_errf(err, errlen, PD_EINVAL, "TLS: a client certificate and its key go together");
  if (tls && tls->cert_file &&
      (SSL_CTX_use_certificate_chain_file(c->tls_ctx, tls->cert_file) != 1 ||
       SSL_CTX_use_PrivateKey_file(c->tls_ctx, tls->key_file, SSL_FILETYPE_PEM) != 1 ||
       SSL_CTX_check_private_key(c->tls_ctx) != 1))
    return pd_errf(err, errlen, PD_EIO, "TLS client certificate %s with key %s: %s", tls->cert_file,
                   tls->key_file, ssl_reason("cannot load them"));
  static const unsigned char alpn[] = {2, 'h', '2'};
  c->tls = SSL_new(c->tls_ctx);
  c->tls_bio = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "prefixd socket");
  BIO *bio = NULL;
  if (c->tls_bio && BIO_meth_set_write(c->tls_bio, sock_bio_write) &&
      BIO_meth_set_read(c->tls_bio, sock_bio_read) &&
      BIO_meth_set_ctrl(c->tls_bio, sock_bio_ctrl) &&
      BIO_meth_set_create(c->tls_bio, sock_bio_create))
    bio = BIO_new(c->tls_bio);
  if (!c->tls || !bio || SSL_set_alpn_protos(c->tls, alpn, sizeof alpn)) {
    BIO_free(bio);
    return pd_errf(err, errlen, PD_ENOMEM, "cannot set up TLS: %s", ssl_reason("out of memory"));
  }
  BIO_set_data(bio, (void *)(intptr_t)c->fd);
  SSL_set_bio(c->tls, bio, bio); /* one BIO both ways: the session owns it */
  X509_VERIFY_PARAM *param = SSL_get0_param(c->tls);
  if (!X509_VERIFY_PARAM_set1_ip_asc(param, host)) { /* not an IP address: a name, and SNI */
    ERR_clear_error();
    if (!SSL_set1_host(c->tls, host) || !SSL_set_tlsext_host_name(c->tls, host))
      return pd_errf(err, errlen, PD_EINVAL, "bad host name for TLS: %s", host);
  }
  SSL_clear_mode(c->tls, SSL_MODE_AUTO_RETRY);
  if (SSL_connect(c->tls) != 1) {
    long verify = SSL_get_verify_result(c->tls);
    if (verify != X509_V_OK) {
      ERR_clear_error();
      return pd_errf(err, errlen, PD_EIO, "TLS: the certificate of %s is not trusted: %s", address,
                     X509_verify_cert_error_string(verify));
    }
    return pd_errf(err, errlen, PD_EIO, "TLS handshake with %s failed: %s", address,
                   ssl_reason("the connection closed"));
  }
  const unsigned char *proto;
  unsigned n_proto;
  SSL_get0_alpn_selected(c->tls, &proto, &n_proto);
  if (n_proto != 2 || memcmp(proto, "h2", 2))
    return pd_errf(err, errlen, PD_EIO, "TLS: %s did not select HTTP/2 (ALPN h2)", address);
  return PD_OK;
}

static int connect_common(const char *address, const char *api_key, int use_tls,
                          const pd_client_tls *tls, char *err, size_t errlen, pd_client **out) {
  *out = NULL;
  if (!address) return pd_errf(err, errlen, PD_EINVAL, "no address");
  if (use_tls && !strncmp(address, "unix:", 5))
    return pd_errf(err, errlen, PD_EINVAL, "TLS is for TCP addresses: a Unix socket is plaintext");
  pd_client *c = calloc(1, sizeof *c);
  if (!c) return pd_errf(err, errlen, PD_ENOMEM, "out of memory");
  c->status = -1;
  c->fd = -1;
  if (api_key) {
    if (strlen(api_key) + 8 > sizeof c->authorization) {
      free(c);
      return pd_errf(err, errlen, PD_EINVAL, "the API key is too long");
    }
    snprintf(c->authorization, sizeof c->authorization, "Bearer %s", api_key);
  }
  char host[256];
  int fd = open_socket(address, c->authority, sizeof c->authority, host);
  if (fd < 0) {
    free(c);
    return pd_errf(err, errlen, fd, "cannot connect to %s: %s", address,
                   fd == PD_EINVAL      ? "not an address (HOST:PORT or unix:/path)"
                   : fd == PD_ENOTFOUND ? "the name does not resolve"
                                        : "nothing accepts there");
  }
  c->fd = fd;
  int rc;
  if (use_tls && (rc = start_tls(c, address, host, tls, err, errlen))) {
    pd_client_close(c);
    return rc;
  }
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs)) {
    pd_client_close(c);
    return pd_errf(err, errlen, PD_ENOMEM, "out of memory");
  }
  nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
  nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_cb);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
  rc = nghttp2_session_client_new(&c->h2, cbs, c);
  nghttp2_session_callbacks_del(cbs);
  if (rc) {
    c->h2 = NULL;
    pd_client_close(c);
    return pd_errf(err, errlen, PD_ENOMEM, "out of memory");
  }
  /* a large window: streamed tokens never wait for WINDOW_UPDATEs */
  nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24}};
  nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1);
  nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 26);
  if (nghttp2_session_send(c->h2)) {
    pd_client_close(c);
    return pd_errf(err, errlen, PD_EIO, "cannot write to %s", address);
  }
  *out = c;
  return PD_OK;
}

int pd_client_connect(const char *address, const char *api_key, pd_client **out) {
  return connect_common(address, api_key, 0, NULL, NULL, 0, out);
}

int pd_client_connect_tls(const char *address, const char *api_key, const pd_client_tls *tls,
                          char *err, size_t errlen, pd_client **out) {
  return connect_common(address, api_key, 1, tls, err, errlen, out);
}

void pd_client_close(pd_client *c) {
  if (!c) return;
  if (c->h2) nghttp2_session_del(c->h2);
  if (c->tls && SSL_is_init_finished(c->tls)) SSL_shutdown(c->tls); /* close_notify, no wait */
  SSL_free(c->tls);                                                 /* and its BIO */
  SSL_CTX_free(c->tls_ctx);
  BIO_meth_free(c->tls_bio);
  ERR_clear_error();
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
                        NV(":scheme", c->tls ? "https" : "http"),
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
    if (!c->tls || !SSL_pending(c->tls)) { /* decrypted bytes waiting need no poll */
      struct pollfd pfd = {c->fd, POLLIN, 0};
      int pr = poll(&pfd, 1, wait);
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) {
        rc = pr == 0 ? PD_ETIMEDOUT : PD_EIO;
        break;
      }
    }
    ssize_t got;
    if (c->tls) {
      ERR_clear_error();
      int r = SSL_read(c->tls, buf, sizeof buf);
      int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(c->tls, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) continue; /* no data yet */
      got = r > 0 ? r : 0;
      if (e == SSL_ERROR_SSL) {
        rc = PD_EIO;
        snprintf(c->message, sizeof c->message, "TLS: %s", ssl_reason("a bad record"));
        break;
      }
    } else {
      got = recv(c->fd, buf, sizeof buf, 0);
    }
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
