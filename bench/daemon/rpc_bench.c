/*
 * rpc_bench.c -- unary RPC rate against a running prefixd: N connections (one thread and one
 * pd_client each) call Stats back to back for S seconds; prints calls/s and latency
 * percentiles over all calls.
 *
 * usage: rpc_bench ADDRESS CONNECTIONS SECONDS [API_KEY]
 * With PREFIXD_TLS_CA set (a PEM file of CA certificates) the connections are TLS.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pd_client.h"

typedef struct worker {
  const char *addr, *key;
  double seconds;
  double *lat_us; /* (cap) */
  size_t n, cap;
  int failed;
} worker;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *run(void *arg) {
  worker *w = arg;
  pd_client *c;
  const char *ca = getenv("PREFIXD_TLS_CA");
  char err[256];
  pd_client_tls tls = {.ca_file = ca};
  if (ca && ca[0] ? pd_client_connect_tls(w->addr, w->key, &tls, err, sizeof err, &c)
                  : pd_client_connect(w->addr, w->key, &c)) {
    w->failed = 1;
    return NULL;
  }
  Prefixd__V1__StatsRequest req = PREFIXD__V1__STATS_REQUEST__INIT;
  double end = now_s() + w->seconds;
  while (now_s() < end && w->n < w->cap) {
    Prefixd__V1__StatsResponse *r;
    double t0 = now_s();
    if (pd_client_stats(c, &req, &r)) {
      w->failed = 1;
      break;
    }
    w->lat_us[w->n++] = (now_s() - t0) * 1e6;
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  pd_client_close(c);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: rpc_bench ADDRESS CONNECTIONS SECONDS [API_KEY]\n");
    return 2;
  }
  int n = atoi(argv[2]);
  double secs = atof(argv[3]);
  if (n < 1 || n > 4096 || secs <= 0) {
    fprintf(stderr, "rpc_bench: 1..4096 connections, seconds > 0\n");
    return 2;
  }
  worker *w = calloc((size_t)n, sizeof *w);
  pthread_t *th = calloc((size_t)n, sizeof *th);
  for (int i = 0; i < n; i++) {
    w[i] = (worker){argv[1], argc > 4 ? argv[4] : NULL, secs, NULL, 0, 2000000, 0};
    w[i].lat_us = malloc(w[i].cap * sizeof(double));
  }
  double t0 = now_s();
  for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, run, &w[i]);
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  double wall = now_s() - t0;
  size_t total = 0;
  int failed = 0;
  for (int i = 0; i < n; i++) total += w[i].n, failed |= w[i].failed;
  double *all = malloc((total ? total : 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < n; i++)
    for (size_t j = 0; j < w[i].n; j++) all[k++] = w[i].lat_us[j];
  qsort(all, total, sizeof *all, cmp);
  printf("connections=%d calls=%zu calls_per_s=%.0f p50_us=%.0f p99_us=%.0f failed=%d\n", n, total,
         total / wall, total ? all[total / 2] : 0, total ? all[total * 99 / 100] : 0, failed);
  return failed ? 1 : 0;
}
