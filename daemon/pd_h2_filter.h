/*
 * pd_h2_filter.h -- a frame-boundary scanner in front of nghttp2 that drops one kind of frame:
 * a client's RST_STREAM for a stream it has not opened yet.
 *
 * Why: grpc-core (the C core under grpcio and most stock gRPC clients) can send RST_STREAM for a
 * stream whose HEADERS it never sent, when a call is cancelled right after it started
 * (grpc/grpc#19655). RFC 9113 5.1 makes a frame other than HEADERS or PRIORITY on an idle stream
 * a connection error, and nghttp2 follows it: GOAWAY PROTOCOL_ERROR, and every other call on
 * that connection fails with UNAVAILABLE. Resetting a stream that never existed asks nothing of
 * the server, so the frame is dropped here instead: exactly the RST_STREAM frames (length 4) on
 * an odd, client-initiated stream id above the highest one a HEADERS frame opened. Every other
 * byte reaches nghttp2 unchanged and in order, and nghttp2 still judges everything else.
 *
 * The scanner only follows frame boundaries (the 24-byte client preface, then 9-byte frame
 * headers and their payload lengths) across reads of any size; it allocates nothing.
 */
#ifndef PD_H2_FILTER_H
#define PD_H2_FILTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_h2_filter {
  uint32_t preface_left;   /* bytes of the client preface still to pass through */
  uint8_t head[9];         /* a frame header split across reads, held back until complete */
  uint32_t head_fill;      /* bytes of head filled */
  uint32_t payload_left;   /* bytes of the current frame's payload still to come */
  int dropping;            /* the current frame's payload is dropped */
  uint32_t max_stream_id;  /* the highest client stream id a HEADERS frame opened */
  uint64_t dropped_frames; /* RST_STREAM frames dropped so far */
} pd_h2_filter;

/* Bytes that pass go to emit in order, in one or more runs; a nonzero return from emit stops the
 * scan and is returned by pd_h2_filter_feed. */
typedef int (*pd_h2_emit_fn)(void *user, const uint8_t *data, size_t len);

void pd_h2_filter_init(pd_h2_filter *f);

/* Scans len bytes read from the client (borrowed for the call). Returns 0, or emit's nonzero. */
int pd_h2_filter_feed(pd_h2_filter *f, const uint8_t *data, size_t len, pd_h2_emit_fn emit,
                      void *user);

#endif /* PD_H2_FILTER_H */
