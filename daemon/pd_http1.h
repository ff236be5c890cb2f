/*
 * pd_http1.h -- a small HTTP/1.1 server on the daemon's libuv loop: the connections of the
 * metrics endpoint and of the OpenAI-compatible API. What each serves is theirs (a request
 * callback); reading, limits, timeouts, keep-alive, pipelining, writing and closing are here.
 *
 * DESIGN
 *
 * Requests are parsed by Debian's libhttp-parser rather than by hand (see the README's
 * dependency table: a hand-written HTTP parser is where request smuggling bugs live). A
 * connection is IDLE (waiting for a request's first byte; 60 s), READING (request_ms to complete
 * it, else 408), RUNNING (the server works on an answer: no timer; the connection is still
 * read, so that a hang-up calls on_gone and the work can be cancelled, and pipelined bytes wait
 * in a 16 KiB buffer), SENDING (send_ms for the client to take the answer's last bytes), LINGER
 * (answered with "Connection: close": the write side is shut, input is read and discarded for
 * up to 2 s or 1 MiB, so the client sees the answer rather than a reset) or CLOSING. One request
 * at a time per connection, answered in order.
 *
 * Bounds: max_conns connections (more are closed at accept); 8 KiB of request line and headers
 * (431), a 1 KiB target (414), max_body bytes of body (413 from its Content-Length or as it
 * arrives; with max_body 0 any body is a 400), Content-Length together with chunked refused
 * (http-parser: no smuggling), "Expect: 100-continue" answered when bodies are taken; a client
 * with more than 8 MiB of answer waiting to be sent is disconnected. A malformed, oversized or
 * too slow request is handed to on_error, whose answer closes the connection.
 *
 * Ownership: the server owns its connections. A connection pointer handed to a callback stays
 * valid until the connection closes; a server that keeps one past its callback (work in
 * progress) registers the work with pd_http1_begin_work and is told by on_gone when the
 * connection goes first. All on the loop thread.
 */
#ifndef PD_HTTP1_H
#define PD_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pd_tls_server;

typedef struct pd_http1 pd_http1;
typedef struct pd_http1_conn pd_http1_conn;

/* A complete request. Every pointer is valid during the on_request call only. */
typedef struct pd_http1_request {
  int method;       /* http-parser's enum http_method (HTTP_GET, HTTP_POST, ...) */
  const char *path; /* the target's path, without the query (n_path bytes, no NUL) */
  size_t n_path;
  const char *authorization; /* the Authorization header's value as sent; NULL when absent */
  size_t n_authorization;
  const char *body; /* (n_body) bytes; NULL when the request has none */
  size_t n_body;
} pd_http1_request;

typedef struct pd_http1_config {
  const char *name;      /* in log lines ("metrics", "openai"); a static string */
  size_t max_conns;      /* open connections; more are closed at accept */
  size_t max_body;       /* bytes of request body; 0: a request with a body is a 400 */
  unsigned max_requests; /* per connection, after which it closes; 0: no limit */
  uint64_t request_ms;   /* from a request's first byte to its end (else 408) */
  uint64_t send_ms;      /* for the client to take an answer's last bytes (else closed) */
  /* A complete request: answer it now or later (pd_http1_begin_work) with pd_http1_respond or
   * a stream. */
  void (*on_request)(pd_http1_conn *c, const pd_http1_request *req, void *user);
  /* A request that cannot be served (code 400, 408, 413, 414, 431 or 503, and why): answer it
   * with pd_http1_respond; the connection closes after. */
  void (*on_error)(pd_http1_conn *c, int code, const char *message, void *user);
  /* The connection closed (hang-up, error, pd_http1_close) while work registered with
   * pd_http1_begin_work had not sent its answer's last bytes: the connection pointer the work
   * holds is dangling from now on. May be NULL when no work is ever registered. */
  void (*on_gone)(void *work, void *user);
  /* pd_http1_close is complete: every handle is closed and the server is freed. May be NULL. */
  void (*on_closed)(void *user);
  void *user;
} pd_http1_config;

/* The server (not listening yet); *out is freed by pd_http1_close. cfg is copied. PD_ENOMEM. */
int pd_http1_create(uv_loop_t *loop, const pd_http1_config *cfg, pd_http1 **out);
/* Listens on host:port (an IPv4 or IPv6 literal; port 0 picks one, *bound_port gets it). With
 * tls (borrowed: it must outlive h, and select ALPN "http/1.1") every connection is TLS: the
 * handshake runs in the idle state, and bytes are decrypted before the parser sees them.
 * PD_EINVAL for a bad address, PD_EEXIST if it is in use, PD_EPERM, PD_ESYS. */
int pd_http1_listen(pd_http1 *h, const char *host, int port, struct pd_tls_server *tls,
                    int *bound_port);
/* Connections accepted from now on use tls (a reloaded certificate; h must be listening with
 * TLS already). Open connections keep their sessions. */
void pd_http1_set_tls(pd_http1 *h, struct pd_tls_server *tls);
/* From now on every answer closes its connection (the daemon drains). */
void pd_http1_drain(pd_http1 *h);
/* Calls fn for the work of every connection that has some (pd_http1_begin_work). */
void pd_http1_each_work(pd_http1 *h, void (*fn)(void *work, void *arg), void *arg);
/* Closes the listener and every connection (on_gone for their work), then calls on_closed and
 * frees the server, once libuv has closed the handles (at once when there are none). NULL is a
 * no-op. */
void pd_http1_close(pd_http1 *h);

/* The request on c is answered later: work is the server's, told to on_gone if c closes first.
 * Stops the request timer. */
void pd_http1_begin_work(pd_http1_conn *c, void *work);
/* The work is done (it may be freed): on_gone will not be told. Then answer. */
void pd_http1_end_work(pd_http1_conn *c);
/* Closes the connection now (an answer that cannot be finished, e.g. out of memory); its work,
 * if any, is told through on_gone first. */
void pd_http1_abort(pd_http1_conn *c);
/* A whole answer: status line, Content-Type ctype, Content-Length, extra_headers (whole lines
 * with their CRLF, or NULL), and body (n_body bytes, copied; not sent to a HEAD request).
 * On a write failure the connection closes. */
void pd_http1_respond(pd_http1_conn *c, int code, const char *ctype, const char *extra_headers,
                      const char *body, size_t n_body);
/* A streamed 200 answer of type ctype with extra_headers (whole lines with their CRLF, or NULL):
 * chunked to an HTTP/1.1 client, else ended by the close. Returns 0, or -1 when the connection
 * closed (a write failed). */
int pd_http1_stream_begin(pd_http1_conn *c, const char *ctype, const char *extra_headers);
/* n bytes of the stream (copied); last ends it. Returns 0, or -1 when the connection closed
 * (a write failed, or the client reads too slowly). */
int pd_http1_stream_write(pd_http1_conn *c, const char *data, size_t n, int last);

/* The standard reason phrase of an HTTP status code (a static string). */
const char *pd_http1_reason(int code);

#endif /* PD_HTTP1_H */
