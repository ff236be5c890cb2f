/*
 * pd_http1.c -- see pd_http1.h for the design. Reading and parsing first, then writing, then a
 * connection's life and the listener.
 *
 * Each connection embeds its TCP handle and one timer (whose callback depends on the state); its
 * memory goes when both close callbacks have run. The server's goes when its listener and every
 * connection are closed after pd_http1_close.
 */
#include "pd_http1.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pd_err.h"
#include "pd_log.h"
#include "pd_tcp.h"
#include "pd_tls.h"

#define MAX_HEAD     8192  /* a request's line and headers */
#define MAX_URL      1024  /* within MAX_HEAD; longer: 414 */
#define READ_BUF     16384 /* one read; also the most a pipelined remainder can be */
#define IDLE_MS      60000 /* keep-alive: a connection with no request in progress */
#define LINGER_MS    2000  /* after "Connection: close": reading and discarding */
#define LINGER_BYTES (1u << 20)
#define MAX_QUEUED   (8u << 20)  /* bytes waiting to be sent to one client */
#define KEEP_BODY    (64u << 10) /* a larger body buffer goes with its request */

enum { S_IDLE, S_READING, S_RUNNING, S_SENDING, S_LINGER, S_CLOSING };

struct pd_http1_conn {
  uv_tcp_t tcp; /* handle data of tcp and timer point back here */
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  pd_http1 *h;
  pd_http1_conn *prev, *next;
  http_parser parser;
  int state, open_handles;
  size_t head_bytes;   /* bytes of the current request's line and headers parsed so far */
  size_t linger_bytes; /* discarded while lingering */
  int headers_done, done, error, keep_alive, chunked;
  unsigned served; /* requests answered on this connection */
  char url[MAX_URL];
  size_t n_url;
  char field[32]; /* the header name being read (lower case; longer names are not ours) */
  size_t n_field;
  int in_value, value_is_auth, has_auth;
  int expect_continue; /* "Expect: 100-continue" (curl, for large bodies) */
  char auth[160];
  size_t n_auth;
  char *body; /* (n_body of cap_body) */
  size_t n_body, cap_body;
  void *work;             /* the server's work on the current request (pd_http1_begin_work) */
  char in[READ_BUF];      /* libuv reads here */
  char pending[READ_BUF]; /* bytes read after the current request (pipelining) */
  size_t n_pending;
  int is_tls;
  pd_tls_conn tls; /* when is_tls: between the socket and everything above */
};

struct pd_http1 {
  uv_tcp_t listener;
  uv_loop_t *loop;
  pd_http1_config cfg;
  pd_tls_server *tls; /* borrowed; NULL: plaintext */
  int listening;      /* the listener is initialised */
  int closing, draining;
  size_t n_conns;   /* connections not yet freed */
  uint64_t refused; /* connections closed at accept (limit) */
  pd_http1_conn *conns;
  http_parser_settings settings;
};

static void conn_close(pd_http1_conn *c);
static void begin_request(pd_http1_conn *c);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

const char *pd_http1_reason(int code) {
  switch (code) {
  case 100: return "Continue";
  case 200: return "OK";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 499: return "Client Closed Request";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Internal Server Error";
  }
}

/* ---- reading --------------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  pd_http1_conn *c = handle->data;
  buf->base = c->in;
  buf->len = sizeof c->in;
}

static void on_close_timeout(uv_timer_t *t) {
  conn_close(t->data);
}

/* A request that cannot be served: on_error answers it, and the connection closes after. */
static void fail_request(pd_http1_conn *c, int code, const char *message) {
  c->keep_alive = 0;
  c->done = 0;                          /* not a request understood: a HEAD gets the body too */
  uv_read_stop((uv_stream_t *)&c->tcp); /* what follows is not parsed; lingering discards it */
  c->h->cfg.on_error(c, code, message, c->h->cfg.user);
}

static void fail_parse(pd_http1_conn *c) {
  int code = c->error ? c->error : HTTP_PARSER_ERRNO(&c->parser) == HPE_HEADER_OVERFLOW ? 431 : 400;
  char message[64];
  size_t max_body = c->h->cfg.max_body;
  if (code == 413 && max_body % (1u << 20) == 0)
    snprintf(message, sizeof message, "the body is limited to %zu MiB", max_body >> 20);
  else if (code == 413)
    snprintf(message, sizeof message, "the body is limited to %zu bytes", max_body);
  fail_request(c, code,
               code == 413                    ? message
               : code == 414                  ? "the URL is limited to 1 KiB"
               : code == 431                  ? "request line and headers are limited to 8 KiB"
               : code == 503                  ? "out of memory"
               : c->error == 400 && !max_body ? "no request here has a body"
                                              : "malformed HTTP request");
}

static void on_request_timeout(uv_timer_t *t) {
  fail_request(t->data, 408, "the request took too long to arrive");
}

static int on_url(http_parser *p, const char *at, size_t n) {
  pd_http1_conn *c = p->data;
  if (c->n_url + n > sizeof c->url) {
    c->error = 414;
    return -1;
  }
  memcpy(c->url + c->n_url, at, n);
  c->n_url += n;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  pd_http1_conn *c = p->data;
  if (c->in_value) c->in_value = 0, c->n_field = 0;
  for (size_t i = 0; i < n; i++) {
    if (c->n_field < sizeof c->field - 1) {
      char ch = at[i];
      c->field[c->n_field] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    c->n_field++;
  }
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  pd_http1_conn *c = p->data;
  if (!c->in_value) {
    c->in_value = 1;
    c->value_is_auth = c->n_field == 13 && !memcmp(c->field, "authorization", 13);
    if (c->value_is_auth) c->n_auth = 0, c->has_auth = 1;
    if (c->n_field == 6 && !memcmp(c->field, "expect", 6))
      c->expect_continue = n >= 12 && !strncasecmp(at, "100-continue", 12);
  }
  if (!c->value_is_auth) return 0;
  if (c->n_auth + n >= sizeof c->auth) {
    c->error = 431;
    return -1;
  }
  memcpy(c->auth + c->n_auth, at, n);
  c->n_auth += n;
  return 0;
}

static int write_bytes(pd_http1_conn *c, const char *data, size_t n, int last);

static int on_headers_complete(http_parser *p) {
  pd_http1_conn *c = p->data;
  size_t max_body = c->h->cfg.max_body;
  c->headers_done = 1;
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
  if (has_body && !max_body) {
    c->error = 400;
    return -1;
  }
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > max_body) {
    c->error = 413;
    return -1;
  }
  /* the client waits for this before it sends the body (or gives up waiting after a while) */
  static const char go_on[] = "HTTP/1.1 100 Continue\r\n\r\n";
  if (has_body && c->expect_continue && write_bytes(c, go_on, sizeof go_on - 1, 0)) return -1;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  pd_http1_conn *c = p->data;
  if (c->n_body + n > c->h->cfg.max_body) {
    c->error = 413;
    return -1;
  }
  if (c->n_body + n > c->cap_body) {
    size_t cap = c->cap_body ? c->cap_body : 4096;
    while (cap < c->n_body + n) cap *= 2;
    char *b = realloc(c->body, cap);
    if (!b) {
      c->error = 503;
      return -1;
    }
    c->body = b;
    c->cap_body = cap;
  }
  memcpy(c->body + c->n_body, at, n);
  c->n_body += n;
  return 0;
}

static int on_message_complete(http_parser *p) {
  pd_http1_conn *c = p->data;
  c->done = 1;
  http_parser_pause(p, 1); /* one request at a time: the rest waits in c->pending */
  return 0;
}

/* The parsed request goes to the server. */
static void dispatch(pd_http1_conn *c) {
  pd_http1 *h = c->h;
  c->served++;
  c->keep_alive = http_should_keep_alive(&c->parser) && !c->parser.upgrade && !h->draining &&
                  (!h->cfg.max_requests || c->served < h->cfg.max_requests);
  if (c->parser.upgrade) c->n_pending = 0; /* another protocol follows: not ours */
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(c->url, c->n_url, 0, &u) || !(u.field_set & (1 << UF_PATH))) {
    fail_request(c, 400, "malformed request target");
    return;
  }
  pd_http1_request req = {.method = (int)c->parser.method,
                          .path = c->url + u.field_data[UF_PATH].off,
                          .n_path = u.field_data[UF_PATH].len,
                          .authorization = c->has_auth ? c->auth : NULL,
                          .n_authorization = c->n_auth,
                          .body = c->n_body ? c->body : NULL,
                          .n_body = c->n_body};
  h->cfg.on_request(c, &req, h->cfg.user);
}

/* Parses bytes of the current request; hands it on once complete. p may be c->pending. */
static void feed(pd_http1_conn *c, const char *p, size_t n) {
  if (c->state == S_IDLE) {
    c->state = S_READING;
    uv_timer_start(&c->timer, on_request_timeout, c->h->cfg.request_ms, 0);
  }
  size_t off = 0;
  while (off < n && !c->done) {
    size_t chunk = n - off;
    if (!c->headers_done) {
      if (c->head_bytes >= MAX_HEAD) {
        c->error = 431;
        fail_parse(c);
        return;
      }
      size_t room = MAX_HEAD - c->head_bytes;
      chunk = chunk < room ? chunk : room;
    }
    size_t used = http_parser_execute(&c->parser, &c->h->settings, p + off, chunk);
    if (c->state == S_CLOSING) return; /* a send from a callback failed */
    if (!c->headers_done) c->head_bytes += used;
    off += used;
    if (c->done) break;
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used < chunk) {
      fail_parse(c);
      return;
    }
  }
  if (!c->done) return;
  size_t left = n - off;
  memmove(c->pending, p + off, left); /* left <= READ_BUF: p held at most one read */
  c->n_pending = left;
  dispatch(c);
}

/* Ready for the next request on this connection (pipelined bytes first). */
static void begin_request(pd_http1_conn *c) {
  c->state = S_IDLE;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->head_bytes = c->n_url = c->n_body = c->n_field = c->n_auth = 0;
  c->headers_done = c->done = c->error = c->in_value = c->value_is_auth = c->has_auth = 0;
  c->expect_continue = c->chunked = 0;
  if (c->cap_body > KEEP_BODY) {
    free(c->body);
    c->body = NULL;
    c->cap_body = 0;
  }
  uv_timer_start(&c->timer, on_close_timeout, IDLE_MS, 0);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (c->n_pending) {
    size_t n = c->n_pending;
    c->n_pending = 0;
    feed(c, c->pending, n); /* may answer and move a further remainder to the front */
  }
}

/* Bytes of the connection's plaintext (at most READ_BUF at a time). Returns nonzero once the
 * connection is closing (pd_tls_sink). */
static int on_plaintext(void *user, const uint8_t *data, size_t n) {
  pd_http1_conn *c = user;
  const char *p = (const char *)data;
  switch (c->state) {
  case S_IDLE:
  case S_READING: feed(c, p, n); break;
  case S_RUNNING:
  case S_SENDING: /* a pipelined request: kept for later, within reason */
    if (c->n_pending + n > sizeof c->pending) {
      conn_close(c);
      break;
    }
    memcpy(c->pending + c->n_pending, p, n);
    c->n_pending += n;
    break;
  case S_LINGER:
    c->linger_bytes += n;
    if (c->linger_bytes > LINGER_BYTES) conn_close(c);
    break;
  default: break;
  }
  return c->state == S_CLOSING;
}

/* What the TLS session has to send by itself (handshake flights, an alert). */
static int tls_flush(pd_http1_conn *c) {
  return write_bytes(c, NULL, 0, 0);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pd_http1_conn *c = stream->data;
  if (nread == 0) return;
  if (nread < 0) { /* EOF or an error: work in progress is told (on_gone) */
    conn_close(c);
    return;
  }
  if (!c->is_tls || c->state == S_LINGER) { /* lingering counts bytes; it decrypts nothing */
    on_plaintext(c, (const uint8_t *)buf->base, (size_t)nread);
    return;
  }
  const char *why;
  int rv = pd_tls_recv(&c->tls, (const uint8_t *)buf->base, (size_t)nread, on_plaintext, c, &why);
  if (c->state == S_CLOSING) return;
  if (rv < 0 && why)
    pd_log(PD_LOG_DEBUG, "http: TLS handshake or record refused", "server=%s why=\"%s\"",
           c->h->cfg.name, why);
  if (tls_flush(c) == 0 && rv) conn_close(c); /* an error's alert goes out first */
}

/* ---- writing --------------------------------------------------------------------------------- */

typedef struct hwrite {
  uv_write_t req;
  pd_http1_conn *c;
  int last;        /* the answer's last bytes: the connection moves on once they are sent */
  int close_after; /* ... by closing */
  uint8_t *cipher; /* TLS: the records sent (malloc'd, freed with the request); else NULL */
  char data[];     /* plaintext: the bytes sent */
} hwrite;

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status; /* lingering goes on until EOF or the timer; a failure closes through either */
}

/* After an answer with "Connection: close": shut the write side, discard input for a while. */
static void linger(pd_http1_conn *c) {
  c->state = S_LINGER;
  c->linger_bytes = 0;
  uv_timer_start(&c->timer, on_close_timeout, LINGER_MS, 0);
  c->shutdown.data = c;
  if (c->is_tls) { /* close_notify before the FIN, so the client knows the answer is whole */
    uint8_t *alert;
    size_t n_alert;
    if (!pd_tls_close_notify(&c->tls, &alert, &n_alert) && n_alert) {
      uv_buf_t b = uv_buf_init((char *)alert, (unsigned)n_alert);
      uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* best effort: the answer is already out */
    }
    free(alert);
  }
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown)) {
    conn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_write(uv_write_t *req, int status) {
  hwrite *w = (hwrite *)req;
  pd_http1_conn *c = w->c;
  int last = w->last, close_after = w->close_after;
  free(w->cipher);
  free(w);
  if (c->state == S_CLOSING) return;
  if (status < 0)
    conn_close(c);
  else if (last && close_after)
    linger(c);
  else if (last)
    begin_request(c);
}

static int closes_after(const pd_http1_conn *c) {
  return !c->keep_alive || c->h->draining || c->h->closing;
}

/* Queues n bytes (copied; through TLS on a TLS connection, where n may be 0: then only what the
 * session has to send, if anything). last: the answer ends with them. Returns 0, or -1 when the
 * connection was closed (a write failed, or the client reads too slowly). */
static int write_bytes(pd_http1_conn *c, const char *data, size_t n, int last) {
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > MAX_QUEUED) {
    pd_log(PD_LOG_WARN, "http: a client does not read its answer; disconnecting", "server=%s",
           c->h->cfg.name);
    conn_close(c);
    return -1;
  }
  uint8_t *cipher = NULL;
  size_t n_cipher = 0;
  if (c->is_tls) {
    int rc = pd_tls_send(&c->tls, (const uint8_t *)data, n, &cipher, &n_cipher);
    if (rc && n_cipher) { /* a failed session's alert: sent, and the connection ends */
      uv_buf_t b = uv_buf_init((char *)cipher, (unsigned)n_cipher);
      uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    if (rc) {
      free(cipher);
      conn_close(c);
      return -1;
    }
    if (!n_cipher && !last) return 0;
  }
  hwrite *w = malloc(sizeof *w + (c->is_tls ? 0 : n));
  if (!w) {
    free(cipher);
    conn_close(c);
    return -1;
  }
  w->c = c;
  w->last = last;
  w->close_after = last && closes_after(c);
  w->cipher = cipher;
  if (!c->is_tls) memcpy(w->data, data, n);
  if (last) {
    c->state = S_SENDING;
    c->work = NULL; /* answered: whatever the server kept, it is done with the connection */
    uv_timer_start(&c->timer, on_close_timeout, c->h->cfg.send_ms, 0);
  }
  uv_buf_t b = c->is_tls ? uv_buf_init((char *)cipher, (unsigned)n_cipher)
                         : uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write)) {
    free(cipher);
    free(w);
    conn_close(c);
    return -1;
  }
  return 0;
}

void pd_http1_respond(pd_http1_conn *c, int code, const char *ctype, const char *extra_headers,
                      const char *body, size_t n_body) {
  if (c->state == S_CLOSING) return;
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Cache-Control: no-store\r\nConnection: %s\r\n\r\n",
                   code, pd_http1_reason(code), ctype, n_body, extra_headers ? extra_headers : "",
                   closes_after(c) ? "close" : "keep-alive");
  if (n < 0 || (size_t)n >= sizeof head) n = 0; /* extra headers too long: a bug; close */
  if (c->done && c->parser.method == HTTP_HEAD) n_body = 0; /* the length, no body */
  char *all = n ? malloc((size_t)n + n_body) : NULL;
  if (!all) {
    conn_close(c);
    return;
  }
  memcpy(all, head, (size_t)n);
  if (n_body) memcpy(all + n, body, n_body);
  write_bytes(c, all, (size_t)n + n_body, 1);
  free(all);
}

int pd_http1_stream_begin(pd_http1_conn *c, const char *ctype, const char *extra_headers) {
  if (c->state == S_CLOSING) return -1;
  c->chunked = c->parser.http_major > 1 || c->parser.http_minor >= 1;
  if (!c->chunked) c->keep_alive = 0; /* HTTP/1.0: the body ends with the connection */
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n%s%s"
                   "Connection: %s\r\n\r\n",
                   ctype, c->chunked ? "Transfer-Encoding: chunked\r\n" : "",
                   extra_headers ? extra_headers : "", closes_after(c) ? "close" : "keep-alive");
  if (n < 0 || (size_t)n >= sizeof head) {
    conn_close(c);
    return -1;
  }
  return write_bytes(c, head, (size_t)n, 0);
}

int pd_http1_stream_write(pd_http1_conn *c, const char *data, size_t n, int last) {
  if (c->state == S_CLOSING) return -1;
  if (!c->chunked) return n || last ? write_bytes(c, data, n, last) : 0;
  char *buf = malloc(n + 32);
  if (!buf) {
    conn_close(c);
    return -1;
  }
  size_t k = 0;
  if (n) {
    k = (size_t)sprintf(buf, "%zx\r\n", n);
    memcpy(buf + k, data, n);
    memcpy(buf + k + n, "\r\n", 2);
    k += n + 2;
  }
  if (last) {
    memcpy(buf + k, "0\r\n\r\n", 5);
    k += 5;
  }
  int rc = k ? write_bytes(c, buf, k, last) : 0;
  free(buf);
  return rc;
}

void pd_http1_begin_work(pd_http1_conn *c, void *work) {
  c->work = work;
  c->state = S_RUNNING;
  uv_timer_stop(&c->timer); /* the answer takes what it takes; a hang-up ends it */
}

void pd_http1_end_work(pd_http1_conn *c) {
  c->work = NULL;
}

void pd_http1_abort(pd_http1_conn *c) {
  conn_close(c);
}

/* ---- a connection's life, and the listener --------------------------------------------------- */

static void maybe_free(pd_http1 *h) {
  if (!h->closing || h->listening || h->n_conns) return;
  void (*on_closed)(void *) = h->cfg.on_closed;
  void *user = h->cfg.user;
  free(h);
  if (on_closed) on_closed(user);
}

static void on_conn_handle_closed(uv_handle_t *handle) {
  pd_http1_conn *c = handle->data;
  if (--c->open_handles > 0) return;
  pd_http1 *h = c->h;
  if (c->is_tls) pd_tls_conn_free(&c->tls);
  free(c->body);
  free(c);
  h->n_conns--;
  maybe_free(h);
}

static void conn_close(pd_http1_conn *c) {
  if (c->state == S_CLOSING) return;
  c->state = S_CLOSING;
  pd_http1 *h = c->h;
  if (c->prev)
    c->prev->next = c->next;
  else
    h->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->work) { /* the server still works on an answer for it */
    void *work = c->work;
    c->work = NULL;
    if (h->cfg.on_gone) h->cfg.on_gone(work, h->cfg.user);
  }
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_connection(uv_stream_t *listener, int status) {
  pd_http1 *h = listener->data;
  if (status < 0) return;
  pd_http1_conn *c = h->n_conns < h->cfg.max_conns && !h->closing ? calloc(1, sizeof *c) : NULL;
  if (!c) {
    pd_tcp_refuse(h->loop, listener);
    if (h->refused++ % 1000 == 0)
      pd_log(PD_LOG_WARN, "http: connection limit reached, closing new connections",
             "server=%s limit=%zu refused=%llu", h->cfg.name, h->cfg.max_conns,
             (unsigned long long)h->refused);
    return;
  }
  c->h = h;
  uv_tcp_init(h->loop, &c->tcp);
  uv_timer_init(h->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  h->n_conns++;
  c->next = h->conns;
  if (h->conns) h->conns->prev = c;
  h->conns = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (h->tls) {
    if (pd_tls_conn_init(&c->tls, h->tls)) {
      conn_close(c);
      return;
    }
    c->is_tls = 1;
  }
  begin_request(c);
}

int pd_http1_create(uv_loop_t *loop, const pd_http1_config *cfg, pd_http1 **out) {
  pd_http1 *h = calloc(1, sizeof *h);
  if (!h) return PD_ENOMEM;
  h->loop = loop;
  h->cfg = *cfg;
  http_parser_settings_init(&h->settings);
  h->settings.on_url = on_url;
  h->settings.on_header_field = on_header_field;
  h->settings.on_header_value = on_header_value;
  h->settings.on_headers_complete = on_headers_complete;
  h->settings.on_body = on_body;
  h->settings.on_message_complete = on_message_complete;
  *out = h;
  return PD_OK;
}

int pd_http1_listen(pd_http1 *h, const char *host, int port, pd_tls_server *tls, int *bound_port) {
  if (h->listening) return PD_EEXIST;
  h->tls = tls;
  int rc = pd_tcp_listen(h->loop, &h->listener, host, port, 128, on_connection, bound_port);
  if (rc != PD_EINVAL) { /* initialised: pd_http1_close closes it */
    h->listener.data = h;
    h->listening = 1;
  }
  return rc;
}

void pd_http1_set_tls(pd_http1 *h, pd_tls_server *tls) {
  if (h->tls) h->tls = tls;
}

void pd_http1_drain(pd_http1 *h) {
  if (h) h->draining = 1;
}

void pd_http1_each_work(pd_http1 *h, void (*fn)(void *work, void *arg), void *arg) {
  if (!h) return;
  for (pd_http1_conn *c = h->conns; c; c = c->next)
    if (c->work) fn(c->work, arg);
}

static void on_listener_closed(uv_handle_t *handle) {
  pd_http1 *h = handle->data;
  h->listening = 0;
  maybe_free(h);
}

void pd_http1_close(pd_http1 *h) {
  if (!h || h->closing) return;
  h->closing = 1;
  for (pd_http1_conn *c = h->conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
  if (h->listening)
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
  else
    maybe_free(h);
}
