/*
 * pd_tcp.h -- a TCP listener on the loop, shared by the gRPC server, the metrics endpoint and the
 * OpenAI-compatible API.
 */
#ifndef PD_TCP_H
#define PD_TCP_H

#include <uv.h>

/* Initialises listener on loop, binds it to host:port (an IPv4 or IPv6 literal; port 0 picks
 * one, written to *bound_port when not NULL) and listens with cb. Returns PD_OK; PD_EINVAL for an
 * address that is not one (the handle is then left untouched, not initialised); otherwise the
 * handle is initialised whatever the outcome and the caller closes it: PD_EEXIST (address in
 * use), PD_EPERM (not allowed), PD_ESYS. */
int pd_tcp_listen(uv_loop_t *loop, uv_tcp_t *listener, const char *host, int port, int backlog,
                  uv_connection_cb cb, int *bound_port);

/* Accepts the next connection on listener and closes it at once (a server at its connection
 * limit: the client sees the close instead of waiting in the backlog). */
void pd_tcp_refuse(uv_loop_t *loop, uv_stream_t *listener);

#endif /* PD_TCP_H */
