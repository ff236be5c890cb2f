/*
 * pd_grpc_test_server.c -- the gRPC transport with one real handler (Health: SERVING), for the
 * stock-client test (grpc_client_test.py). Prints "port N" once listening on 127.0.0.1, and
 * exits 0 on SIGTERM or SIGINT after closing every connection.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "pd_grpc_server.h"
#include "prefixd/v1/prefixd.pb-c.h"

static pd_grpc_server *server;
static uv_signal_t sigterm, sigint;

static void health(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  Prefixd__V1__HealthResponse resp = PREFIXD__V1__HEALTH_RESPONSE__INIT;
  resp.status = PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
  pd_grpc_call_reply(call, &resp.base);
  pd_grpc_call_finish(call, PD_GRPC_OK, NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
  pd_grpc_server_close(server);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sigint, NULL);
}

int main(void) {
  uv_loop_t *loop = uv_default_loop();
  if (pd_grpc_server_create(loop, &server) ||
      pd_grpc_server_route(server, &prefixd__v1__prefixd__descriptor, "Health", health, NULL))
    return 1;
  int port;
  if (pd_grpc_server_listen_tcp(server, "127.0.0.1", 0, NULL, &port)) {
    fprintf(stderr, "pd_grpc_test_server: cannot listen\n");
    return 1;
  }
  printf("port %d\n", port);
  fflush(stdout);
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return 0;
}
