/*
 * pd_tls.h -- TLS on the daemon's TCP connections: OpenSSL over memory BIOs, so that the libuv
 * loop keeps owning the sockets and every read and write stays on the loop thread.
 *
 * DESIGN
 *
 * A connection's ciphertext comes from its libuv read callback and goes to pd_tls_recv, which
 * decrypts what it can and hands the plaintext, in order, to the protocol's own input function
 * (nghttp2 for gRPC, http-parser for the HTTP/1.1 servers); the handshake runs inside it. What
 * the protocol wants to send goes through pd_tls_send, which returns the records to write with
 * uv_write, together with any handshake bytes the last read produced. Plaintext sent before the
 * handshake is over (the gRPC server's first SETTINGS) is kept and encrypted once it is.
 *
 * The server context (pd_tls_server_create) loads a PEM certificate chain and its private key,
 * checks that they match, allows TLS 1.2 and 1.3 only, refuses renegotiation, and selects the
 * one application protocol its listener speaks by ALPN ("h2" for gRPC, "http/1.1" for the
 * HTTP/1.1 servers): a client that offers ALPN without it gets the no_application_protocol
 * alert; a client that offers none is served (curl without --http2, old clients).
 *
 * Certificates are reloaded by making a new pd_tls_server and handing it to the listener: new
 * connections use it, and the old one may be freed at once, since each session holds its own
 * reference to the OpenSSL context it began with.
 *
 * A session that fails during its handshake sends its alert (the client learns why: no shared
 * protocol, a bad record); one that fails after it (in practice: an allocation inside OpenSSL)
 * sends nothing more, not even the alert, and its connection just closes. What it had begun to
 * write may be half a record, which a client reads as corruption (grpcio: UNKNOWN "Stream
 * removed"); a connection that ends is what clients retry (UNAVAILABLE).
 *
 * Ownership: a pd_tls_server is the daemon's; a listener borrows it until it is given another
 * or closes. A pd_tls_conn is embedded in its connection and freed by pd_tls_conn_free in the
 * connection's close callback. Not thread-safe; one loop thread.
 */
#ifndef PD_TLS_H
#define PD_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_tls_server pd_tls_server;

/* What a listener's TLS is made of: the paths, borrowed for the call. */
typedef struct pd_tls_files {
  const char *cert;      /* a PEM certificate chain, the server's first */
  const char *key;       /* its unencrypted PEM private key */
  const char *client_ca; /* PEM CAs a client's certificate must chain to; NULL: none is asked */
} pd_tls_files;

typedef struct pd_tls_conn {
  struct ssl_st *ssl; /* NULL: not initialised, or freed */
  struct bio_st *in;  /* ciphertext read from the socket, owned by ssl */
  struct bio_st *out; /* ciphertext for the socket, owned by ssl */
  uint8_t *pending;   /* plaintext sent before the handshake finished (n_pending bytes) */
  size_t n_pending, cap_pending;
  int failed;      /* a TLS error ended the session: nothing more is read or sent */
  int established; /* the handshake was seen finished */
  int quiet;       /* failed once established: its alert is not sent either */
} pd_tls_conn;

/* Loads files->cert and files->key for a listener that speaks alpn ("h2" or "http/1.1"; another
 * is PD_EINVAL). With files->client_ca, a client must present a certificate that chains to one of
 * those CAs, or its handshake fails (certificate_required, or unknown_ca). *out is the caller's, freed with
 * pd_tls_server_free. Returns PD_OK; PD_EIO when a file cannot be read or parsed, PD_EINVAL when
 * the key does not match the certificate, PD_ENOMEM; err gets one line saying which. */
int pd_tls_server_create(const pd_tls_files *files, const char *alpn, pd_tls_server **out,
                         char *err, size_t errlen);
/* NULL is a no-op. Connections made from it may live on: their sessions hold the context. */
void pd_tls_server_free(pd_tls_server *s);

/* A server-side session of s on conn (zeroed or freed before). PD_OK or PD_ENOMEM. */
int pd_tls_conn_init(pd_tls_conn *conn, pd_tls_server *s);
/* Frees the session; conn may then be initialised again. A zeroed conn is a no-op. */
void pd_tls_conn_free(pd_tls_conn *conn);

/* Receives the plaintext of pd_tls_recv; nonzero stops it (and is returned). */
typedef int (*pd_tls_sink)(void *user, const uint8_t *data, size_t len);

/* Feeds len bytes of ciphertext read from the socket and passes every byte of plaintext they
 * complete to sink, in order. Returns 0; 1 when the peer closed the session (close_notify);
 * what sink returned when nonzero; PD_EINVAL for a TLS error (a failed handshake, a bad record:
 * an alert for the peer may wait in pd_tls_send's output, *why says which: a static string);
 * PD_ENOMEM. */
int pd_tls_recv(pd_tls_conn *conn, const uint8_t *data, size_t len, pd_tls_sink sink, void *user,
                const char **why);

/* Encrypts len bytes of plaintext (0 is allowed: then only what the handshake or an alert has
 * to send) and returns in *out the bytes to write to the socket, *n_out of them; *out is NULL
 * when there are none, else malloc'd and the caller's to free. Returns PD_OK; PD_ENOMEM (the
 * connection cannot go on); PD_EINVAL when the session has failed (*out may still carry a
 * failed handshake's alert). */
int pd_tls_send(pd_tls_conn *conn, const uint8_t *data, size_t len, uint8_t **out, size_t *n_out);

/* Ends the session politely: the close_notify alert, returned as pd_tls_send returns bytes. */
int pd_tls_close_notify(pd_tls_conn *conn, uint8_t **out, size_t *n_out);

#endif /* PD_TLS_H */
