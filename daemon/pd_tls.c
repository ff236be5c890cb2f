/*
 * pd_tls.c -- see pd_tls.h.
 *
 * Each session reads its ciphertext from a memory BIO (`in`, told to report "retry" when empty,
 * not EOF) and writes to another (`out`), so OpenSSL never touches a socket. SSL_read drives the
 * handshake as well as the records; whatever it wants sent (its flights and alerts) waits in `out`
 * until the next pd_tls_send drains it.
 */
#include "pd_tls.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_err.h"

#define PLAIN_CHUNK 16384 /* plaintext bytes taken from SSL_read at a time: one record */

struct pd_tls_server {
  SSL_CTX *ctx; /* one reference; each session holds another, so it outlives this wrapper */
};

/* The protocols a listener may speak, as ALPN writes them (length first). Static, so that a
 * handshake still running on an older context after a reload never reads freed memory. */
static const unsigned char ALPN_H2[] = "\x02h2", ALPN_HTTP1[] = "\x08http/1.1";

/* The client's ALPN list (length-prefixed names) must name ours (arg); else the handshake
 * fails with the no_application_protocol alert. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  const unsigned char *ours = arg;
  unsigned want = ours[0];
  for (unsigned i = 0; i < inlen;) {
    unsigned n = in[i];
    if (i + 1 + n > inlen) break; /* a malformed list */
    if (n == want && !memcmp(in + i + 1, ours + 1, n)) {
      *out = in + i + 1;
      *outlen = (unsigned char)n;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* The reason of the oldest error OpenSSL queued, or fallback; the queue is cleared. */
static const char *ssl_reason(const char *fallback) {
  unsigned long e = ERR_peek_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : fallback;
}

int pd_tls_server_create(const pd_tls_files *files, const char *alpn, pd_tls_server **out,
                         char *err, size_t errlen) {
  *out = NULL;
  const char *cert_file = files->cert, *key_file = files->key, *client_ca = files->client_ca;
  const unsigned char *wire = !strcmp(alpn, "h2")         ? ALPN_H2
                              : !strcmp(alpn, "http/1.1") ? ALPN_HTTP1
                                                          : NULL;
  if (!wire) return pd_errf(err, errlen, PD_EINVAL, "unknown ALPN protocol '%s'", alpn);
  const char *paths[3] = {cert_file, key_file, client_ca};
  const char *what[3] = {"certificate", "key", "client CA"};
  for (int i = 0; i < 3; i++) /* the usual mistakes, said in the usual words */
    if (paths[i] && access(paths[i], R_OK))
      return pd_errf(err, errlen, PD_EIO, "TLS %s %s: %s", what[i], paths[i], strerror(errno));
  pd_tls_server *s = calloc(1, sizeof *s);
  if (!s) return pd_errf(err, errlen, PD_ENOMEM, "out of memory");
  ERR_clear_error();
  int rc = PD_OK;
  s->ctx = SSL_CTX_new(TLS_server_method());
  if (!s->ctx) {
    rc = pd_errf(err, errlen, PD_ENOMEM, "cannot create a TLS context: %s",
                 ssl_reason("out of memory"));
    goto fail;
  }
  SSL_CTX_set_min_proto_version(s->ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(s->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(s->ctx, SSL_MODE_RELEASE_BUFFERS); /* idle connections hold no record buffers */
  /* No TLS 1.3 session tickets: gRPC and HTTP clients keep their connections, and grpcio and
   * Python's ssl do not resume sessions unless told to, so the two tickets OpenSSL sends after
   * every handshake were work for nothing (bench/results/tls.md: 0.24 ms of CPU a handshake
   * without them, 0.28 with). */
  SSL_CTX_set_num_tickets(s->ctx, 0);
  /* TLS 1.2: forward-secret AEAD suites only (HTTP/2 forbids the rest, RFC 9113 9.2.2) */
  if (SSL_CTX_set_cipher_list(s->ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20") != 1) {
    rc = pd_errf(err, errlen, PD_EINVAL, "TLS cipher list: %s", ssl_reason("refused"));
    goto fail;
  }
  if (SSL_CTX_use_certificate_chain_file(s->ctx, cert_file) != 1) {
    rc = pd_errf(err, errlen, PD_EIO, "TLS certificate %s: %s (expected a PEM certificate chain)",
                 cert_file, ssl_reason("cannot load it"));
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(s->ctx, key_file, SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      rc = pd_errf(err, errlen, PD_EINVAL, "TLS key %s does not match the certificate %s", key_file,
                   cert_file);
      goto fail;
    }
    rc = pd_errf(err, errlen, PD_EIO, "TLS key %s: %s (expected an unencrypted PEM private key)",
                 key_file, ssl_reason("cannot load it"));
    goto fail;
  }
  if (SSL_CTX_check_private_key(s->ctx) != 1) {
    rc = pd_errf(err, errlen, PD_EINVAL, "TLS key %s does not match the certificate %s: %s",
                 key_file, cert_file, ssl_reason("mismatch"));
    goto fail;
  }
  if (client_ca) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
    if (!names || SSL_CTX_load_verify_locations(s->ctx, client_ca, NULL) != 1) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      rc = pd_errf(err, errlen, PD_EIO, "TLS client CA %s: %s (expected PEM certificates)",
                   client_ca, ssl_reason("no certificate in it"));
      goto fail;
    }
    SSL_CTX_set_client_CA_list(s->ctx, names); /* the context owns the list */
    SSL_CTX_set_verify(s->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  SSL_CTX_set_alpn_select_cb(s->ctx, select_alpn, (void *)wire);
  *out = s;
  return PD_OK;
fail:
  pd_tls_server_free(s);
  return rc;
}

void pd_tls_server_free(pd_tls_server *s) {
  if (!s) return;
  SSL_CTX_free(s->ctx);
  free(s);
}

int pd_tls_conn_init(pd_tls_conn *conn, pd_tls_server *s) {
  memset(conn, 0, sizeof *conn);
  conn->ssl = SSL_new(s->ctx);
  conn->in = BIO_new(BIO_s_mem());
  conn->out = BIO_new(BIO_s_mem());
  if (!conn->ssl || !conn->in || !conn->out) {
    SSL_free(conn->ssl);
    BIO_free(conn->in);
    BIO_free(conn->out);
    memset(conn, 0, sizeof *conn);
    ERR_clear_error();
    return PD_ENOMEM;
  }
  BIO_set_mem_eof_return(conn->in, -1);        /* empty means "wait for more", not end of stream */
  SSL_set_bio(conn->ssl, conn->in, conn->out); /* the session owns both from here */
  SSL_set_accept_state(conn->ssl);
  return PD_OK;
}

void pd_tls_conn_free(pd_tls_conn *conn) {
  SSL_free(conn->ssl); /* frees the BIOs */
  free(conn->pending);
  memset(conn, 0, sizeof *conn);
}

int pd_tls_recv(pd_tls_conn *conn, const uint8_t *data, size_t len, pd_tls_sink sink, void *user,
                const char **why) {
  *why = NULL;
  if (conn->failed) {
    *why = "the TLS session has failed";
    return PD_EINVAL;
  }
  for (size_t done = 0; done < len;) {
    size_t chunk = len - done > INT_MAX ? INT_MAX : len - done;
    int w = BIO_write(conn->in, data + done, (int)chunk);
    if (w <= 0) {
      ERR_clear_error();
      return PD_ENOMEM;
    }
    done += (size_t)w;
  }
  uint8_t plain[PLAIN_CHUNK];
  for (;;) {
    conn->established = conn->established || SSL_is_init_finished(conn->ssl);
    ERR_clear_error();
    int r = SSL_read(conn->ssl, plain, sizeof plain);
    if (r > 0) {
      int rv = sink(user, plain, (size_t)r);
      if (rv) return rv;
      continue;
    }
    switch (SSL_get_error(conn->ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return 0; /* the rest of a record (or a flight) is still to come */
    case SSL_ERROR_ZERO_RETURN: return 1;
    default:
      conn->failed = 1;
      /* after a fatal error OpenSSL reports the session as in its handshake again, so the
       * handshake's end is read from before the failure */
      conn->quiet = conn->established;
      *why = ssl_reason("TLS error");
      return PD_EINVAL;
    }
  }
}

/* Moves what OpenSSL wrote for the socket into a fresh buffer (*out, the caller's). */
static int drain(pd_tls_conn *conn, uint8_t **out, size_t *n_out) {
  *out = NULL;
  *n_out = 0;
  size_t n = BIO_ctrl_pending(conn->out);
  if (!n) return PD_OK;
  uint8_t *buf = malloc(n);
  if (!buf) return PD_ENOMEM;
  for (size_t done = 0; done < n;) {
    size_t chunk = n - done > INT_MAX ? INT_MAX : n - done;
    int r = BIO_read(conn->out, buf + done, (int)chunk);
    if (r <= 0) { /* cannot happen with a memory BIO holding n bytes */
      free(buf);
      ERR_clear_error();
      return PD_EINVAL;
    }
    done += (size_t)r;
  }
  *out = buf;
  *n_out = n;
  return PD_OK;
}

/* SSL_write of all len bytes (a memory BIO takes them all). */
static int write_all(pd_tls_conn *conn, const uint8_t *data, size_t len) {
  for (size_t done = 0; done < len;) {
    size_t chunk = len - done > (1u << 30) ? (1u << 30) : len - done;
    ERR_clear_error();
    int w = SSL_write(conn->ssl, data + done, (int)chunk);
    if (w <= 0) {
      conn->failed = conn->quiet = 1; /* only ever called once the handshake is over */
      ERR_clear_error();
      return PD_EINVAL;
    }
    done += (size_t)w;
  }
  return PD_OK;
}

int pd_tls_send(pd_tls_conn *conn, const uint8_t *data, size_t len, uint8_t **out, size_t *n_out) {
  *out = NULL; /* on every return, error or not */
  *n_out = 0;
  int rc = PD_OK;
  if (!conn->failed && len) {
    if (SSL_is_init_finished(conn->ssl) && !conn->n_pending) {
      rc = write_all(conn, data, len);
    } else { /* kept until the handshake is over */
      if (conn->n_pending + len > conn->cap_pending) {
        size_t cap = conn->cap_pending ? conn->cap_pending : 4096;
        while (cap < conn->n_pending + len) cap *= 2;
        uint8_t *p = realloc(conn->pending, cap);
        if (!p) return PD_ENOMEM;
        conn->pending = p;
        conn->cap_pending = cap;
      }
      memcpy(conn->pending + conn->n_pending, data, len);
      conn->n_pending += len;
    }
  }
  if (!conn->failed && conn->n_pending && SSL_is_init_finished(conn->ssl)) {
    rc = write_all(conn, conn->pending, conn->n_pending);
    conn->n_pending = 0;
  }
  if (conn->quiet) return PD_EINVAL; /* failed after the handshake: not a byte more (pd_tls.h) */
  int drc = drain(conn, out, n_out); /* a failed handshake's alert still goes out */
  if (drc) return drc;
  return conn->failed ? PD_EINVAL : rc;
}

int pd_tls_close_notify(pd_tls_conn *conn, uint8_t **out, size_t *n_out) {
  if (conn->quiet) {
    *out = NULL;
    *n_out = 0;
    return PD_OK;
  }
  if (!conn->failed && SSL_is_init_finished(conn->ssl)) {
    ERR_clear_error();
    SSL_shutdown(conn->ssl); /* 0: sent, the peer's not seen yet; we do not wait for it */
    ERR_clear_error();
  }
  return drain(conn, out, n_out);
}
