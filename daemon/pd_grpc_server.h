/*
 * pd_grpc_server.h -- gRPC over HTTP/2 on a libuv loop: the transport of the daemon.
 *
 * One loop thread owns everything here. Each accepted TCP connection gets an nghttp2 server
 * session; a request stream collects its headers (:path, content-type, grpc-timeout,
 * authorization) and its body, and when the client half-closes, the body's gRPC frame (1-byte
 * compressed flag, 4-byte big-endian length, message) is unpacked with the protoc-c descriptor of
 * the routed method and handed to the method's handler. The handler answers with
 * pd_grpc_call_reply (zero or more messages) and then pd_grpc_call_finish (status + message),
 * now or later from the loop thread. Errors found before a handler runs are answered
 * trailers-only: an unknown path gets UNIMPLEMENTED, an unparsable message INVALID_ARGUMENT, a
 * message over 4 MiB RESOURCE_EXHAUSTED, a compressed one UNIMPLEMENTED. A malformed HTTP/2
 * frame makes nghttp2 send GOAWAY; the server never crashes on input.
 *
 * TLS (optional, TCP only): a connection's bytes go through its pd_tls_conn before nghttp2 sees
 * them and after nghttp2 writes them; the handshake must end, and the first HTTP/2 frame arrive,
 * within PD_GRPC_HANDSHAKE_MS, as for plaintext.
 *
 * Ownership: the server owns connections, streams and calls; a pd_grpc_call stays valid until
 * the handler finishes it, or until its cancel callback ran (client reset or disconnect).
 */
#ifndef PD_GRPC_SERVER_H
#define PD_GRPC_SERVER_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pd_tls_server;

#define PD_GRPC_MAX_MESSAGE (4u << 20)
/* Request body bytes held for unfinished requests, all connections together. */
#define PD_GRPC_MAX_BUFFERED ((size_t)256 << 20)
/* A connection must send its first HTTP/2 frame within this; an idle one (no calls, nothing
 * read) is closed with a GOAWAY after PD_GRPC_IDLE_MS. */
#define PD_GRPC_HANDSHAKE_MS 3000
#define PD_GRPC_IDLE_MS      (10 * 60 * 1000)
#define PD_GRPC_MAX_STREAMS  100 /* concurrent streams per connection (SETTINGS) */
/* Streams a client may reset: a burst, then a rate per second (nghttp2's Rapid Reset guard).
 * A stock gRPC client whose calls time out or are cancelled resets each one; at nghttp2's
 * suggested 100/s, one cancelling ~400 calls a second lost its whole connection (with every
 * other call on it). An attacker resetting as fast as it can still meets the burst in well
 * under a second. */
#define PD_GRPC_RESET_BURST 1000
#define PD_GRPC_RESET_RATE  1000

enum pd_grpc_status {
  PD_GRPC_OK = 0,
  PD_GRPC_CANCELLED = 1,
  PD_GRPC_UNKNOWN = 2,
  PD_GRPC_INVALID_ARGUMENT = 3,
  PD_GRPC_DEADLINE_EXCEEDED = 4,
  PD_GRPC_NOT_FOUND = 5,
  PD_GRPC_ALREADY_EXISTS = 6,
  PD_GRPC_PERMISSION_DENIED = 7,
  PD_GRPC_RESOURCE_EXHAUSTED = 8,
  PD_GRPC_FAILED_PRECONDITION = 9,
  PD_GRPC_ABORTED = 10,
  PD_GRPC_OUT_OF_RANGE = 11,
  PD_GRPC_UNIMPLEMENTED = 12,
  PD_GRPC_INTERNAL = 13,
  PD_GRPC_UNAVAILABLE = 14,
  PD_GRPC_DATA_LOSS = 15,
  PD_GRPC_UNAUTHENTICATED = 16
};

typedef struct pd_grpc_server pd_grpc_server;
typedef struct pd_grpc_call pd_grpc_call;

/* Called on the loop thread when the client resets the stream or disconnects before the handler
 * finished. The call stays valid: the handler must still finish it (nothing is sent then). */
typedef void (*pd_grpc_cancel_fn)(pd_grpc_call *call, void *user);

/* req: the unpacked request, owned by the call (freed when the call ends). */
typedef void (*pd_grpc_handler)(pd_grpc_call *call, const ProtobufCMessage *req, void *user);

int pd_grpc_server_create(uv_loop_t *loop, pd_grpc_server **out);
/* Routes "/<service>/<method>" to handler. PD_ENOTFOUND if the service has no such method. */
int pd_grpc_server_route(pd_grpc_server *s, const ProtobufCServiceDescriptor *svc,
                         const char *method, pd_grpc_handler handler, void *user);
/* Listens on host:port (port 0 picks one; *bound_port gets it). With tls (not NULL; it must
 * select ALPN "h2" and outlive the server) every connection there is TLS first; the Unix socket
 * stays plaintext. */
int pd_grpc_server_listen_tcp(pd_grpc_server *s, const char *host, int port,
                              struct pd_tls_server *tls, int *bound_port);
/* Connections accepted on the TCP listener from now on use tls (a reloaded certificate; the
 * listener must have been given one). Open connections keep their sessions. */
void pd_grpc_server_set_tls(pd_grpc_server *s, struct pd_tls_server *tls);
/* Listens on a Unix-domain socket at path (a stale socket file there is replaced). */
int pd_grpc_server_listen_unix(pd_grpc_server *s, const char *path);
/* Draining: closes the listeners and sends GOAWAY (shutdown notice); open calls go on. */
void pd_grpc_server_stop_listening(pd_grpc_server *s);
/* Calls accepted and not yet freed. */
size_t pd_grpc_server_open_calls(const pd_grpc_server *s);
/* Closes the listeners and every connection (open calls are abandoned: their cancel callbacks
 * run); the server is freed once the loop has run the close callbacks. */
void pd_grpc_server_close(pd_grpc_server *s);

/* The canonical name of a gRPC status code ("OK", "RESOURCE_EXHAUSTED"; a static string), or
 * "UNKNOWN" for a code outside 0..16. */
const char *pd_grpc_status_name(int status);

/* Monotonic milliseconds, the clock of deadlines. */
int64_t pd_grpc_now_ms(void);

/* The request's authorization metadata ("Bearer ..."), or NULL. Valid for the call's life. */
const char *pd_grpc_call_authorization(const pd_grpc_call *c);
/* The deadline from grpc-timeout, in pd_grpc_now_ms() time; 0 if the client set none. */
int64_t pd_grpc_call_deadline_ms(const pd_grpc_call *c);
/* 1 once the client is gone (reset or disconnect). */
int pd_grpc_call_is_closed(const pd_grpc_call *c);
/* Sets the cancel callback (see pd_grpc_cancel_fn); fn NULL removes it. */
void pd_grpc_call_on_cancel(pd_grpc_call *c, pd_grpc_cancel_fn fn, void *user);
/* Queues one response message (packed now). Returns 0 or PD_EINVAL after finish. */
int pd_grpc_call_reply(pd_grpc_call *c, const ProtobufCMessage *msg);
/* Ends the call with a status and message (may be NULL); the call is gone afterwards. */
void pd_grpc_call_finish(pd_grpc_call *c, int status, const char *message);
/* The call's id, sent as the "x-request-id" header (in the trailers of a trailers-only answer):
 * what the access log names it by. Copied (at most 47 bytes); before the first reply. */
void pd_grpc_call_set_request_id(pd_grpc_call *c, const char *id);
/* Before pd_grpc_call_finish: the trailers say when the client may retry
 * ("grpc-retry-pushback-ms", which gRPC's retry policies honour). ms > 0. */
void pd_grpc_call_set_pushback(pd_grpc_call *c, int64_t ms);

#endif /* PD_GRPC_SERVER_H */
