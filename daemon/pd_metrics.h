/*
 * pd_metrics.h -- the operator's HTTP endpoint: Prometheus text exposition at GET /metrics,
 * liveness at GET /healthz and readiness at GET /readyz, on a port of its own (default
 * 127.0.0.1:9464), served on the daemon's libuv loop.
 *
 * DESIGN
 *
 * The HTTP/1.1 connections are pd_http1's (shared with the OpenAI-compatible API: http-parser,
 * keep-alive, pipelining, limits and timeouts); this file answers the requests.
 *
 * The values come from the engine thread, which owns everything they describe: GET /metrics
 * becomes a PD_JOB_CALL job whose run function (pd_metrics_render) writes the exposition text
 * into the job's arena between two forward passes. The job carries an on_done callback
 * (pd_job.on_done), so when the engine reports it done the service's output handler hands it
 * back here instead of to the gRPC layer, and the HTTP response is written from the loop thread.
 * /healthz (200 while the loop runs) and /readyz (200 while serving, 503 once draining) are
 * answered on the loop thread at once.
 *
 * Bounds, so that a slow or hostile client cannot hurt the daemon: at most 64 connections (more
 * are closed at accept); a request's line and headers at most 8 KiB (else 431); no request body
 * (400); GET and HEAD only (405); one request at a time per connection (pipelined ones wait, up
 * to 16 KiB of them, and are answered in order); 10 s to send a whole request and 10 s to take
 * the response (else the connection is closed); an idle keep-alive connection is closed after
 * 60 s and after 100 requests. A connection that sent something malformed gets its 4xx with
 * "Connection: close", then the write side is shut and what it still sends is read and
 * discarded for up to 2 s (so the client sees the answer rather than a reset).
 *
 * The endpoint has no authentication: keep it on loopback or behind the network's policy.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>
#include <uv.h>

#include "pd_engine.h"

typedef struct pd_metrics pd_metrics;

/* Creates the server on loop for engine (which must outlive it). *out is the caller's: it is
 * freed by pd_metrics_close once the loop has closed its handles. */
int pd_metrics_create(uv_loop_t *loop, pd_engine *engine, pd_metrics **out);
/* Listens on host:port (an IPv4 or IPv6 literal; port 0 picks one, *bound_port gets it).
 * PD_EINVAL for a bad address, PD_EEXIST if it is in use, PD_EPERM, PD_ESYS. */
int pd_metrics_listen(pd_metrics *m, const char *host, int port, int *bound_port);
/* /readyz answers 200 while ready is 1, 503 ("draining") once it is 0. Starts at 0. */
void pd_metrics_set_ready(pd_metrics *m, int ready);
/* Shutdown, step 1: new scrapes get 503 from now on. Returns the metrics jobs still in the
 * engine; call again until 0, then pd_metrics_close. */
size_t pd_metrics_quiesce(pd_metrics *m);
/* Closes the listener and every connection. Jobs still in the engine keep the server's memory
 * until they come back (quiesce first). NULL is a no-op. */
void pd_metrics_close(pd_metrics *m);

/* Engine thread: the whole exposition text (Prometheus text format 0.0.4). *text is malloc'd,
 * NUL-terminated, the caller's. PD_ENOMEM. */
int pd_metrics_render(pd_engine *e, char **text, size_t *n_text);

#endif /* PD_METRICS_H */
