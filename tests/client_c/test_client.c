/* test_client.c -- the C client library against a real prefixd on loopback (the synthetic
 * model): every kind of call, streaming with cancel, statuses with messages, TCP and Unix
 * sockets, keys, a server that goes away, and all of it over TLS (certificates made by the
 * openssl command: a test CA, a server certificate it signed, an unrelated CA). */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_client.h"
#include "pd_err.h"

#define ADMIN "client-test-admin-key-0123456789"

static pid_t daemon_pid;
static char addr[64], sock_path[128], data_dir[64];

/* Starts prefixd (PREFIXD_BIN) on PD_TINY_MODEL with an admin key, over TLS with pki's server
 * certificate when pki is not NULL (asking clients for a certificate of pki's CA when mutual);
 * waits for its start line. */
static void start_daemon_tls(const char *pki, int mutual) {
  snprintf(data_dir, sizeof data_dir, "/tmp/pd_client_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(data_dir));
  char log[128];
  snprintf(log, sizeof log, "%s/log", data_dir);
  snprintf(sock_path, sizeof sock_path, "%s/sock", data_dir);
  daemon_pid = fork();
  if (daemon_pid == 0) {
    if (!freopen(log, "w", stderr)) _exit(126);
    setenv("PREFIXD_ADMIN_KEY", ADMIN, 1);
    char cert[160], key[160], ca[160];
    snprintf(cert, sizeof cert, "%s/server.pem", pki ? pki : "");
    snprintf(key, sizeof key, "%s/server.key", pki ? pki : "");
    snprintf(ca, sizeof ca, "%s/ca.pem", pki ? pki : "");
    execl(getenv("PREFIXD_BIN"), "prefixd", "--model", getenv("PD_TINY_MODEL"), "--listen",
          "127.0.0.1:0", "--unix", sock_path, "--data-dir", data_dir, "--threads", "2",
          pki ? "--tls-cert" : (char *)NULL, cert, "--tls-key", key,
          mutual ? "--tls-client-ca" : (char *)NULL, ca, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 600; i++) {
    FILE *f = fopen(log, "r");
    char line[2048];
    while (f && fgets(line, sizeof line, f)) {
      const char *p = strstr(line, " port=");
      if (strstr(line, "prefixd ready") && p && strchr(p, '\n')) { /* a whole line */
        snprintf(addr, sizeof addr, "127.0.0.1:%d", atoi(p + 6));
        fclose(f);
        return;
      }
    }
    if (f) fclose(f);
    usleep(50000);
  }
  ck_abort_msg("prefixd did not start");
}

static void start_daemon(void) {
  start_daemon_tls(NULL, 0);
}

static int stop_daemon(void) {
  int status = -1;
  if (daemon_pid > 0) {
    kill(daemon_pid, SIGTERM);
    waitpid(daemon_pid, &status, 0);
    daemon_pid = 0;
  }
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", data_dir);
  if (system(cmd)) { /* leftovers in /tmp only */
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static Prefixd__V1__Prompt *text_prompt(Prefixd__V1__Prompt *p, const char *text) {
  prefixd__v1__prompt__init(p);
  p->kind_case = PREFIXD__V1__PROMPT__KIND_TEXT;
  p->text = (char *)text;
  return p;
}

static int count_and_stop_after_3(const Prefixd__V1__GenerateResponse *m, void *user) {
  int *n = user;
  return ++*n >= 3;
}

START_TEST(calls_streams_statuses_and_keys) {
  start_daemon();
  pd_client *admin;
  ck_assert_int_eq(pd_client_connect(addr, ADMIN, &admin), 0);
  Prefixd__V1__HealthRequest hr = PREFIXD__V1__HEALTH_REQUEST__INIT;
  Prefixd__V1__HealthResponse *h;
  for (int i = 0; i < 2; i++) { /* one connection, many calls */
    ck_assert_int_eq(pd_client_health(admin, &hr, &h), 0);
    ck_assert_int_eq(h->status, PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING);
    protobuf_c_message_free_unpacked(&h->base, NULL);
  }
  /* a tenant and its key */
  Prefixd__V1__CreateTenantRequest ct = PREFIXD__V1__CREATE_TENANT_REQUEST__INIT;
  ct.name = "gamma";
  Prefixd__V1__CreateTenantResponse *ctr;
  ck_assert_int_eq(pd_client_create_tenant(admin, &ct, &ctr), 0);
  char key[128];
  snprintf(key, sizeof key, "%s", ctr->api_key);
  protobuf_c_message_free_unpacked(&ctr->base, NULL);
  ck_assert_int_eq(pd_client_create_tenant(admin, &ct, &ctr), PD_CLIENT_ESTATUS);
  ck_assert_int_eq(pd_client_status(admin), 6); /* ALREADY_EXISTS */
  ck_assert_ptr_nonnull(strstr(pd_client_message(admin), "gamma"));

  pd_client *c;
  ck_assert_int_eq(pd_client_connect(addr, key, &c), 0);
  Prefixd__V1__Prompt p;
  Prefixd__V1__TokenizeRequest tr = PREFIXD__V1__TOKENIZE_REQUEST__INIT;
  tr.prompt = text_prompt(&p, "hello world");
  Prefixd__V1__TokenizeResponse *toks;
  ck_assert_int_eq(pd_client_tokenize(c, &tr, &toks), 0);
  ck_assert_uint_gt(toks->n_token_ids, 0);
  Prefixd__V1__DetokenizeRequest dr = PREFIXD__V1__DETOKENIZE_REQUEST__INIT;
  dr.token_ids = toks->token_ids;
  dr.n_token_ids = toks->n_token_ids;
  Prefixd__V1__DetokenizeResponse *dt;
  ck_assert_int_eq(pd_client_detokenize(c, &dr, &dt), 0);
  ck_assert_str_eq(dt->text, "hello world");
  protobuf_c_message_free_unpacked(&dt->base, NULL);
  protobuf_c_message_free_unpacked(&toks->base, NULL);

  /* generate twice over one prompt: the second reports cached tokens */
  Prefixd__V1__GenerateRequest g = PREFIXD__V1__GENERATE_REQUEST__INIT;
  g.prompt = text_prompt(&p, "a shared preamble that every session of this tenant sends. "
                             "a shared preamble that every session of this tenant sends.");
  g.max_tokens = 8;
  char *text;
  Prefixd__V1__GenerateResponse *fin;
  ck_assert_int_eq(pd_client_generate_text(c, &g, &text, &fin), 0);
  ck_assert_uint_eq(fin->usage->cached_tokens, 0);
  ck_assert_uint_le(fin->usage->generated_tokens, 8);
  free(text);
  protobuf_c_message_free_unpacked(&fin->base, NULL);
  ck_assert_int_eq(pd_client_generate_text(c, &g, &text, &fin), 0);
  ck_assert_uint_gt(fin->usage->cached_tokens, 16);
  free(text);
  protobuf_c_message_free_unpacked(&fin->base, NULL);

  /* a stream the callback cancels; the connection goes on serving */
  Prefixd__V1__SamplingParams sp = PREFIXD__V1__SAMPLING_PARAMS__INIT;
  sp.ignore_eos = 1;
  g.sampling = &sp;
  g.max_tokens = 500;
  int n = 0;
  ck_assert_int_eq(pd_client_generate(c, &g, count_and_stop_after_3, &n), PD_CLIENT_ECANCELLED);
  ck_assert_int_eq(n, 3);
  /* a deadline */
  pd_client_set_timeout_ms(c, 1);
  g.max_tokens = 0;
  int rc = pd_client_generate_text(c, &g, &text, &fin);
  ck_assert_int_eq(rc, PD_CLIENT_ESTATUS);
  ck_assert_int_eq(pd_client_status(c), 4); /* DEADLINE_EXCEEDED */
  pd_client_set_timeout_ms(c, 0);
  /* statuses: the admin service with a tenant key; a bad prefix id */
  Prefixd__V1__ListTenantsRequest lt = PREFIXD__V1__LIST_TENANTS_REQUEST__INIT;
  Prefixd__V1__ListTenantsResponse *ltr;
  ck_assert_int_eq(pd_client_list_tenants(c, &lt, &ltr), PD_CLIENT_ESTATUS);
  ck_assert_int_eq(pd_client_status(c), 7); /* PERMISSION_DENIED */
  Prefixd__V1__PinRequest pr = PREFIXD__V1__PIN_REQUEST__INIT;
  pr.prefix_id = "not-hex";
  Prefixd__V1__PinResponse *pres;
  ck_assert_int_eq(pd_client_pin(c, &pr, &pres), PD_CLIENT_ESTATUS);
  ck_assert_int_eq(pd_client_status(c), 3);
  ck_assert_ptr_nonnull(strstr(pd_client_message(c), "32 hex digits"));
  /* the same key over the Unix socket; a wrong key */
  char unix_addr[160];
  snprintf(unix_addr, sizeof unix_addr, "unix:%s", sock_path);
  pd_client *u;
  ck_assert_int_eq(pd_client_connect(unix_addr, key, &u), 0);
  Prefixd__V1__StatsRequest sr = PREFIXD__V1__STATS_REQUEST__INIT;
  Prefixd__V1__StatsResponse *st;
  ck_assert_int_eq(pd_client_stats(u, &sr, &st), 0);
  ck_assert_uint_eq(st->n_tenants, 1);
  ck_assert_str_eq(st->tenants[0]->tenant, "gamma");
  ck_assert_uint_ge(st->tenants[0]->requests, 2);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pd_client_close(u);
  ck_assert_int_eq(pd_client_connect(addr, "pfx-not-a-key", &u), 0);
  ck_assert_int_eq(pd_client_stats(u, &sr, &st), PD_CLIENT_ESTATUS);
  ck_assert_int_eq(pd_client_status(u), 16); /* UNAUTHENTICATED */
  pd_client_close(u);
  /* the server goes away: calls fail cleanly, then keep failing */
  ck_assert_int_eq(stop_daemon(), 0);
  ck_assert_int_lt(pd_client_stats(c, &sr, &st), 0);
  ck_assert_int_lt(pd_client_stats(c, &sr, &st), 0);
  pd_client_close(c);
  pd_client_close(admin);
}
END_TEST

START_TEST(bad_addresses) {
  pd_client *c;
  ck_assert_int_eq(pd_client_connect("no-port", NULL, &c), PD_EINVAL);
  ck_assert_int_eq(pd_client_connect("127.0.0.1:http", NULL, &c), PD_EINVAL);
  ck_assert_int_eq(pd_client_connect("[::1:80", NULL, &c), PD_EINVAL);
  ck_assert_int_eq(pd_client_connect("unix:", NULL, &c), PD_EINVAL);
  ck_assert_int_eq(pd_client_connect("unix:/nonexistent/prefixd.sock", NULL, &c), PD_EIO);
  ck_assert_int_eq(pd_client_connect("127.0.0.1:1", NULL, &c), PD_EIO); /* nothing listens */
  ck_assert_ptr_null(c);
}
END_TEST

/* The test certificates in a fresh directory dir (64 bytes): tests/common/pd_pki.py's. */
static void make_pki(char *dir) {
  snprintf(dir, 64, "/tmp/pd_client_pki_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "cd %s && for ca in ca other-ca; do openssl req -x509 -newkey ec -pkeyopt "
           "ec_paramgen_curve:prime256v1 -nodes -keyout $ca.key -out $ca.pem -days 2 -subj "
           "/CN=$ca || exit 1; done && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > "
           "san.ext && for who in server client; do openssl req -newkey ec -pkeyopt "
           "ec_paramgen_curve:prime256v1 -nodes -keyout $who.key -out $who.csr -subj "
           "/CN=localhost && openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key "
           "-CAcreateserial -out $who.pem -days 2 -extfile san.ext || exit 1; done",
           dir);
  ck_assert_msg(system(cmd) == 0, "openssl could not make the test certificates");
}

START_TEST(tls_calls_refusals_and_no_sigpipe) {
  char pki[64], ca[128], other_ca[128], err[256];
  make_pki(pki);
  snprintf(ca, sizeof ca, "%s/ca.pem", pki);
  snprintf(other_ca, sizeof other_ca, "%s/other-ca.pem", pki);
  pd_client_tls trust = {.ca_file = ca}, untrusted = {.ca_file = other_ca};
  start_daemon_tls(pki, 0);
  pd_client *admin, *c;
  ck_assert_int_eq(pd_client_connect_tls(addr, ADMIN, &trust, err, sizeof err, &admin), 0);
  Prefixd__V1__CreateTenantRequest ct = PREFIXD__V1__CREATE_TENANT_REQUEST__INIT;
  ct.name = "delta";
  Prefixd__V1__CreateTenantResponse *ctr;
  ck_assert_int_eq(pd_client_create_tenant(admin, &ct, &ctr), 0);
  char key[128];
  snprintf(key, sizeof key, "%s", ctr->api_key);
  protobuf_c_message_free_unpacked(&ctr->base, NULL);
  pd_client_close(admin);
  /* by name too: the certificate names localhost */
  char by_name[64];
  snprintf(by_name, sizeof by_name, "localhost%s", strrchr(addr, ':'));
  ck_assert_int_eq(pd_client_connect_tls(by_name, key, &trust, err, sizeof err, &c), 0);
  pd_client_close(c);
  ck_assert_int_eq(pd_client_connect_tls(addr, key, &trust, err, sizeof err, &c), 0);
  /* a generation over TLS, then the same over the Unix socket: the same text, from the cache */
  Prefixd__V1__Prompt p;
  Prefixd__V1__GenerateRequest g = PREFIXD__V1__GENERATE_REQUEST__INIT;
  g.prompt = text_prompt(&p, "a preamble every session of this tenant sends, over TLS or not. "
                             "a preamble every session of this tenant sends, over TLS or not.");
  g.max_tokens = 12;
  char *text_tls, *text_plain;
  Prefixd__V1__GenerateResponse *fin;
  ck_assert_int_eq(pd_client_generate_text(c, &g, &text_tls, &fin), 0);
  protobuf_c_message_free_unpacked(&fin->base, NULL);
  char unix_addr[160];
  snprintf(unix_addr, sizeof unix_addr, "unix:%s", sock_path);
  pd_client *u;
  ck_assert_int_eq(pd_client_connect(unix_addr, key, &u), 0);
  ck_assert_int_eq(pd_client_generate_text(u, &g, &text_plain, &fin), 0);
  ck_assert_str_eq(text_plain, text_tls);
  ck_assert_uint_gt(fin->usage->cached_tokens, 16);
  protobuf_c_message_free_unpacked(&fin->base, NULL);
  free(text_tls);
  free(text_plain);
  pd_client_close(u);
  /* a 1 MiB prompt: many records each way */
  size_t n_big = 1u << 20;
  char *big = malloc(n_big + 1);
  for (size_t i = 0; i < n_big; i++) big[i] = "abcdefgh "[i % 9];
  big[n_big] = 0;
  Prefixd__V1__TokenizeRequest tr = PREFIXD__V1__TOKENIZE_REQUEST__INIT;
  tr.prompt = text_prompt(&p, big);
  Prefixd__V1__TokenizeResponse *toks;
  ck_assert_int_eq(pd_client_tokenize(c, &tr, &toks), 0);
  ck_assert_uint_gt(toks->n_token_ids, 100000);
  protobuf_c_message_free_unpacked(&toks->base, NULL);
  free(big);
  /* refusals, each with its reason */
  pd_client *bad;
  ck_assert_int_eq(pd_client_connect_tls(addr, key, &untrusted, err, sizeof err, &bad), PD_EIO);
  ck_assert_msg(strstr(err, "not trusted"), "%s", err);
  ck_assert_int_eq(pd_client_connect_tls(unix_addr, key, &trust, err, sizeof err, &bad), PD_EINVAL);
  ck_assert_msg(strstr(err, "Unix socket"), "%s", err);
  ck_assert_ptr_null(bad);
  /* plaintext to the TLS port: the server ends it at its first bytes, which the connect may
   * already see (a later write of its preface fails) or the first call does */
  Prefixd__V1__HealthRequest hr = PREFIXD__V1__HEALTH_REQUEST__INIT;
  Prefixd__V1__HealthResponse *h;
  int rc = pd_client_connect(addr, key, &bad);
  ck_assert(rc == 0 || rc == PD_EIO);
  if (rc == 0) ck_assert_int_lt(pd_client_health(bad, &hr, &h), 0);
  pd_client_close(bad);
  ck_assert_int_eq(pd_client_health(c, &hr, &h), 0); /* the TLS connection still serves */
  protobuf_c_message_free_unpacked(&h->base, NULL);
  /* the server goes away; with SIGPIPE's default action a write to the closed socket would
   * kill this process: the call must fail instead */
  ck_assert_int_eq(stop_daemon(), 0);
  signal(SIGPIPE, SIG_DFL);
  Prefixd__V1__StatsRequest sr = PREFIXD__V1__STATS_REQUEST__INIT;
  Prefixd__V1__StatsResponse *st;
  for (int i = 0; i < 3; i++) ck_assert_int_lt(pd_client_stats(c, &sr, &st), 0);
  pd_client_close(c);
  signal(SIGPIPE, SIG_IGN);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", pki);
  if (system(cmd)) { /* leftovers in /tmp only */
  }
}
END_TEST

START_TEST(mutual_tls) {
  char pki[64], ca[128], cert[128], key[128], err[256];
  make_pki(pki);
  snprintf(ca, sizeof ca, "%s/ca.pem", pki);
  snprintf(cert, sizeof cert, "%s/client.pem", pki);
  snprintf(key, sizeof key, "%s/client.key", pki);
  start_daemon_tls(pki, 1);
  Prefixd__V1__HealthRequest hr = PREFIXD__V1__HEALTH_REQUEST__INIT;
  Prefixd__V1__HealthResponse *h;
  pd_client *c;
  pd_client_tls with = {.ca_file = ca, .cert_file = cert, .key_file = key};
  ck_assert_int_eq(pd_client_connect_tls(addr, ADMIN, &with, err, sizeof err, &c), 0);
  ck_assert_int_eq(pd_client_health(c, &hr, &h), 0);
  protobuf_c_message_free_unpacked(&h->base, NULL);
  pd_client_close(c);
  /* no certificate: TLS 1.3 finishes the client's handshake before the server has checked
   * it, so the refusal comes at the connect or at the first call */
  pd_client_tls without = {.ca_file = ca};
  int rc = pd_client_connect_tls(addr, ADMIN, &without, err, sizeof err, &c);
  ck_assert(rc == 0 || rc == PD_EIO);
  if (rc == 0) ck_assert_int_lt(pd_client_health(c, &hr, &h), 0);
  pd_client_close(c);
  pd_client_tls key_only = {.ca_file = ca, .key_file = key};
  ck_assert_int_eq(pd_client_connect_tls(addr, ADMIN, &key_only, err, sizeof err, &c), PD_EINVAL);
  ck_assert_msg(strstr(err, "go together"), "%s", err);
  ck_assert_int_eq(stop_daemon(), 0);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", pki);
  if (system(cmd)) { /* leftovers in /tmp only */
  }
}
END_TEST

int main(void) {
  if (!getenv("PREFIXD_BIN") || !getenv("PD_TINY_MODEL") || access(getenv("PD_TINY_MODEL"), R_OK)) {
    fprintf(stderr, "test_client: PREFIXD_BIN and PD_TINY_MODEL are needed\n");
    return 77;
  }
  signal(SIGPIPE, SIG_IGN);
  Suite *s = suite_create("client");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, calls_streams_statuses_and_keys);
  tcase_add_test(tc, bad_addresses);
  tcase_add_test(tc, tls_calls_refusals_and_no_sigpipe);
  tcase_add_test(tc, mutual_tls);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
