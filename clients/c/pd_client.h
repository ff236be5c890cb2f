/*
 * pd_client.h -- the C client library of prefixd: a blocking gRPC client (HTTP/2 cleartext with
 * prior knowledge, as gRPC speaks it, or HTTP/2 over TLS) over TCP or a Unix socket, on nghttp2,
 * protobuf-c and OpenSSL, the same libraries the daemon uses.
 *
 *     pd_client *c;
 *     if (pd_client_connect("127.0.0.1:7878", api_key_or_NULL, &c)) ...
 *     Prefixd__V1__GenerateRequest req = PREFIXD__V1__GENERATE_REQUEST__INIT;
 *     ...
 *     char *text; Prefixd__V1__GenerateResponse *final;
 *     int rc = pd_client_generate_text(c, &req, &text, &final);
 *     if (rc == PD_CLIENT_ESTATUS) fprintf(stderr, "%d %s\n", pd_client_status(c),
 *                                          pd_client_message(c));
 *
 * Return codes: 0 when the call completed with grpc-status OK; PD_CLIENT_ESTATUS (positive) when
 * the server answered with another status (pd_client_status and pd_client_message say which);
 * PD_CLIENT_ECANCELLED when a stream callback asked to stop; a negative PD_E* code (pd_err.h)
 * for a local or transport failure (connection refused or lost, malformed response), after which
 * the connection is unusable: close it and connect again.
 *
 * One call at a time per pd_client (not thread-safe); calls on one client reuse its connection.
 * Every response message handed to a callback is freed when the callback returns; responses
 * returned through an out-parameter belong to the caller (protobuf_c_message_free_unpacked).
 */
#ifndef PD_CLIENT_H
#define PD_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/v1/prefixd.pb-c.h"

#define PD_CLIENT_ESTATUS    1 /* a non-OK gRPC status from the server */
#define PD_CLIENT_ECANCELLED 2 /* the stream callback returned nonzero; the stream was reset */

typedef struct pd_client pd_client;

/* address: "HOST:PORT" (a name, an IPv4 address, or [IPv6]) or "unix:/path". api_key: sent as
 * "authorization: Bearer <key>" on every call; NULL for none. PD_EINVAL for a malformed
 * address, PD_ENOTFOUND if the name does not resolve, PD_EIO if nothing accepts. */
int pd_client_connect(const char *address, const char *api_key, pd_client **out);
/* TLS settings of pd_client_connect_tls; the paths are read during the call. */
typedef struct pd_client_tls {
  const char *ca_file;   /* PEM CAs the server's certificate must chain to; NULL: the system's */
  const char *cert_file; /* a client certificate chain (PEM) for a daemon that asks for one
                            (--tls-client-ca); NULL: none */
  const char *key_file;  /* its unencrypted PEM private key (with cert_file) */
} pd_client_tls;

/* The same over TLS (a daemon started with --tls-cert; TCP addresses only). The server's
 * certificate must chain to tls->ca_file (tls NULL: the system's roots, no client certificate)
 * and name the address's host (a DNS name or an IP address); ALPN must select "h2". On failure
 * err (errlen bytes, may be NULL) gets one line saying why: PD_EINVAL (a malformed address, a
 * Unix socket, a key without its certificate), PD_ENOTFOUND, PD_EIO (nothing accepts, a file
 * cannot be loaded, or the handshake or a certificate failed), PD_ENOMEM. */
int pd_client_connect_tls(const char *address, const char *api_key, const pd_client_tls *tls,
                          char *err, size_t errlen, pd_client **out);
void pd_client_close(pd_client *c);

/* Deadline of each following call in ms (sent as grpc-timeout; the client also stops waiting
 * a second after it); 0 = none. */
void pd_client_set_timeout_ms(pd_client *c, int64_t ms);

/* The last call's gRPC status (0 = OK, -1 = none received) and message ("" if none). Valid
 * until the next call. */
int pd_client_status(const pd_client *c);
const char *pd_client_message(const pd_client *c);

/* Called for every response message; nonzero cancels the call. */
typedef int (*pd_client_on_msg)(const ProtobufCMessage *msg, void *user);

/* Any call: method is the full path ("/prefixd.v1.Prefixd/Stats"). */
int pd_client_call(pd_client *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, pd_client_on_msg on_msg,
                   void *user);
/* A unary call: on 0, *resp is the response, owned by the caller. */
int pd_client_unary(pd_client *c, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp);

/* Generate, streaming: on_msg gets every GenerateResponse (the last one has finish_reason). */
typedef int (*pd_client_on_generate)(const Prefixd__V1__GenerateResponse *msg, void *user);
int pd_client_generate(pd_client *c, const Prefixd__V1__GenerateRequest *req,
                       pd_client_on_generate on_msg, void *user);
/* Generate, blocking: *text (malloc'd, the caller frees) gets the whole text, *final (may be
 * NULL; the caller frees it with protobuf_c_message_free_unpacked) the last message with usage
 * and timings. */
int pd_client_generate_text(pd_client *c, const Prefixd__V1__GenerateRequest *req, char **text,
                            Prefixd__V1__GenerateResponse **final);

/* Every unary RPC of both services: pd_client_<method>(c, &req, &resp). */
#define PD_CLIENT_UNARY(name, Req, Resp)                                                           \
  int pd_client_##name(pd_client *c, const Prefixd__V1__##Req *req, Prefixd__V1__##Resp **resp);
PD_CLIENT_UNARY(tokenize, TokenizeRequest, TokenizeResponse)
PD_CLIENT_UNARY(detokenize, DetokenizeRequest, DetokenizeResponse)
PD_CLIENT_UNARY(warm, WarmRequest, WarmResponse)
PD_CLIENT_UNARY(lookup, LookupRequest, LookupResponse)
PD_CLIENT_UNARY(list_prefixes, ListPrefixesRequest, ListPrefixesResponse)
PD_CLIENT_UNARY(evict, EvictRequest, EvictResponse)
PD_CLIENT_UNARY(pin, PinRequest, PinResponse)
PD_CLIENT_UNARY(unpin, UnpinRequest, UnpinResponse)
PD_CLIENT_UNARY(stats, StatsRequest, StatsResponse)
PD_CLIENT_UNARY(health, HealthRequest, HealthResponse)
PD_CLIENT_UNARY(create_tenant, CreateTenantRequest, CreateTenantResponse)
PD_CLIENT_UNARY(list_tenants, ListTenantsRequest, ListTenantsResponse)
PD_CLIENT_UNARY(delete_tenant, DeleteTenantRequest, DeleteTenantResponse)
PD_CLIENT_UNARY(set_limits, SetLimitsRequest, SetLimitsResponse)
PD_CLIENT_UNARY(rotate_key, RotateKeyRequest, RotateKeyResponse)
PD_CLIENT_UNARY(grant_namespace, GrantNamespaceRequest, GrantNamespaceResponse)
PD_CLIENT_UNARY(revoke_namespace, RevokeNamespaceRequest, RevokeNamespaceResponse)
#undef PD_CLIENT_UNARY

#endif /* PD_CLIENT_H */
