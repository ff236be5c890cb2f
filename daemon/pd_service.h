/*
 * pd_service.h -- the RPCs of prefixd.v1.Prefixd and prefixd.v1.Admin, between the gRPC server
 * (loop thread) and the engine (engine thread).
 *
 * On the loop thread a handler turns the call into a pd_job: it checks the authorization
 * header's form, takes the deadline, registers the cancel callback and submits the job. Health
 * is answered on the loop thread at once (no key needed, as the gRPC health protocol expects).
 * grpc.health.v1.Health (Check, Watch) is answered there too: Check at once, Watch with the
 * status now and then each change (pd_service_drain), until the client goes.
 * Every other RPC's body runs on the engine thread (the functions below the line in
 * pd_service.c), which owns the tree and the registry; the job comes back through the engine's
 * outbox, and pd_service_output replies and finishes the call.
 *
 * Errors map to gRPC statuses: a malformed argument INVALID_ARGUMENT, an unknown prefix or
 * tenant NOT_FOUND, a missing or wrong key UNAUTHENTICATED, another tenant's prefix or an admin
 * RPC without the admin key PERMISSION_DENIED, a full queue or a quota RESOURCE_EXHAUSTED.
 */
#ifndef PD_SERVICE_H
#define PD_SERVICE_H

#include "pd_engine.h"
#include "pd_grpc_server.h"

typedef struct pd_health_watch pd_health_watch;

typedef struct pd_service {
  pd_engine *engine;
  pd_grpc_server *server;
  int draining;
  size_t live_jobs;         /* submitted and not yet finished */
  pd_job *live;             /* every submitted job not yet finished (linked through live_next) */
  pd_health_watch *watches; /* open grpc.health.v1 Watch calls; each frees itself when its
                               client goes (cancel callback, also when the server closes) */
  uint32_t id_prefix;       /* request ids: "req-" this (random at start) and a counter */
  uint64_t next_id;
} pd_service;

/* Routes every method of both services to svc. */
int pd_service_register(pd_service *svc, pd_grpc_server *server, pd_engine *engine);
/* The engine's output callback (loop thread): replies and finishes calls. */
void pd_service_output(pd_job *unused, void *svc);
/* Starts draining: new RPCs are refused UNAVAILABLE, health answers NOT_SERVING, and every open
 * health Watch is told so. */
void pd_service_drain(pd_service *svc);
/* Marks every live job cancelled (the drain deadline passed). */
void pd_service_cancel_all(pd_service *svc);
/* With the engine's log_requests (--log-requests, on by default): one info line for a finished
 * Generate or Warm job (other kinds: nothing), an access log with no prompt text in it: api
 * ("grpc", "openai"), rpc (the method or endpoint), id (the job's request_id), the tenant, the status it ended with
 * (status, and message when not OK), the token counts, the finish reason, and the queue,
 * first-token and total times. Loop thread. */
void pd_service_log_request(const pd_engine *e, const char *api, const char *rpc, const pd_job *job,
                            int status, const char *message);

#endif /* PD_SERVICE_H */
