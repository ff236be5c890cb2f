/*
 * pd_openai.h -- the OpenAI-compatible HTTP API, beside the gRPC one (--openai-listen).
 *
 * POST /v1/chat/completions and POST /v1/completions (JSON in, JSON or server-sent events out)
 * and GET /v1/models, so that clients written for OpenAI's API (its Python and JavaScript SDKs,
 * LangChain, benchmark harnesses) talk to prefixd unchanged. A request becomes the same
 * GenerateRequest a gRPC client would send and the same engine job (pd_job with on_output): the
 * same authentication ("Authorization: Bearer <api key>", the tenant's key), quotas, scheduling
 * and prefix cache, whose hits come back as usage.prompt_tokens_details.cached_tokens.
 *
 * What is mapped: messages (text content, or arrays of text parts), prompt (a string, one string
 * in an array, or token ids), max_tokens / max_completion_tokens, temperature (default 1, as
 * OpenAI's), top_p, seed, stop, stream and stream_options.include_usage, logprobs and
 * top_logprobs; and the extensions top_k, min_p, repetition_penalty and ignore_eos. What prefixd
 * cannot honour is refused with a 400 naming the field (n > 1, non-zero presence or frequency
 * penalties, logit_bias, tools, echo, a response_format other than text), never silently
 * ignored. `model` is not checked: one model is served, and it is named in every answer.
 *
 * HTTP/1.1 on the loop thread, parsed by http-parser (as the metrics endpoint): keep-alive and
 * pipelining, 8 KiB of request line and headers, 4 MiB of body, 30 s to send a request, 60 s
 * idle, at most 256 connections. While a request runs the connection is still read, so a client
 * that hangs up cancels its generation; a client that does not read its stream is disconnected
 * once 8 MiB wait to be sent. Errors are OpenAI's error object with the HTTP status of the gRPC
 * status (400, 401, 403, 404, 429, 499, 500, 503, 504).
 *
 * Ownership: the server owns its connections and each request's job until the engine gives it
 * back done; a job whose connection went away frees itself then.
 */
#ifndef PD_OPENAI_H
#define PD_OPENAI_H

#include <uv.h>

#include "pd_engine.h"

struct pd_tls_server;

typedef struct pd_openai pd_openai;

/* model_id: the name answers carry (copied). */
int pd_openai_create(uv_loop_t *loop, pd_engine *engine, const char *model_id, pd_openai **out);
/* Listens on host:port (port 0 picks one; *bound_port gets it), over TLS when tls is not NULL
 * (it must select ALPN "http/1.1" and outlive o). PD_EEXIST if the address is in use, PD_EPERM
 * if not allowed, PD_EINVAL for a bad address. */
int pd_openai_listen(pd_openai *o, const char *host, int port, struct pd_tls_server *tls,
                     int *bound_port);
/* Connections from now on use tls (a reloaded certificate; see pd_http1_set_tls). */
void pd_openai_set_tls(pd_openai *o, struct pd_tls_server *tls);
/* Draining: requests from now on get 503; those running go on. */
void pd_openai_drain(pd_openai *o);
/* Requests whose jobs are in the engine. */
size_t pd_openai_in_flight(const pd_openai *o);
/* Marks every running request cancelled (the drain timeout ran out). */
void pd_openai_cancel_all(pd_openai *o);
/* Closes the listener and every connection. The server is freed once its handles are closed and
 * the engine gave back every job; NULL is a no-op. */
void pd_openai_close(pd_openai *o);

/* The request a body would make, without a server (the fuzz target and tests): parses it as a
 * chat (chat = 1) or completions request and packs the GenerateRequest it maps to into *packed
 * (malloc'd, the caller frees; *n_packed bytes). PD_OK; PD_EINVAL with the 400's message in err;
 * PD_ENOMEM. */
int pd_openai_parse(const char *body, size_t n, int chat, char *err, size_t errlen,
                    uint8_t **packed, size_t *n_packed);

#endif /* PD_OPENAI_H */
