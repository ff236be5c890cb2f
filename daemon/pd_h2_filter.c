/*
 * pd_h2_filter.c -- see pd_h2_filter.h.
 *
 * The scan keeps a run [run, i) of input bytes that pass and hands it to emit whenever something
 * must be left out (a dropped frame, or a frame header split across reads, which is held back in
 * the filter until its 9 bytes are known). A header wholly inside the input is judged in place,
 * so the common case is one emit per read.
 */
#include "pd_h2_filter.h"

#include <string.h>

#define PREFACE_BYTES    24
#define FRAME_HEADERS    0x1
#define FRAME_RST_STREAM 0x3

void pd_h2_filter_init(pd_h2_filter *f) {
  memset(f, 0, sizeof *f);
  f->preface_left = PREFACE_BYTES;
}

/* 1 if a frame with this header is a reset of a client stream no HEADERS has opened yet. */
static int resets_unopened_stream(const pd_h2_filter *f, uint32_t length, uint8_t type,
                                  uint32_t stream_id) {
  return type == FRAME_RST_STREAM && length == 4 && (stream_id & 1) && stream_id > f->max_stream_id;
}

/* Judges a complete frame header: sets up the payload to come and returns 1 to drop the frame. */
static int judge(pd_h2_filter *f, const uint8_t *h) {
  uint32_t length = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
  uint8_t type = h[3];
  uint32_t stream_id =
      ((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8]) & 0x7fffffffu;
  int drop = resets_unopened_stream(f, length, type, stream_id);
  if (type == FRAME_HEADERS && (stream_id & 1) && stream_id > f->max_stream_id)
    f->max_stream_id = stream_id;
  f->payload_left = length;
  f->dropping = drop;
  if (drop) f->dropped_frames++;
  return drop;
}

int pd_h2_filter_feed(pd_h2_filter *f, const uint8_t *data, size_t len, pd_h2_emit_fn emit,
                      void *user) {
  size_t i = 0, run = 0;
  int rc;
  while (i < len) {
    size_t avail = len - i;
    if (f->preface_left) {
      size_t take = avail < f->preface_left ? avail : f->preface_left;
      f->preface_left -= (uint32_t)take;
      i += take;
    } else if (f->payload_left) {
      size_t take = avail < f->payload_left ? avail : f->payload_left;
      if (f->dropping) {
        if (i > run && (rc = emit(user, data + run, i - run))) return rc;
        run = i + take;
      }
      f->payload_left -= (uint32_t)take;
      i += take;
      if (!f->payload_left) f->dropping = 0;
    } else if (f->head_fill == 0 && avail >= sizeof f->head) { /* a whole header, in place */
      if (judge(f, data + i)) {
        if (i > run && (rc = emit(user, data + run, i - run))) return rc;
        run = i + sizeof f->head;
      }
      i += sizeof f->head;
    } else { /* a header split across reads: held back until complete */
      if (f->head_fill == 0 && i > run && (rc = emit(user, data + run, i - run))) return rc;
      size_t take = sizeof f->head - f->head_fill;
      if (take > avail) take = avail;
      memcpy(f->head + f->head_fill, data + i, take);
      f->head_fill += (uint32_t)take;
      i += take;
      run = i;
      if (f->head_fill < sizeof f->head) break;
      f->head_fill = 0;
      if (!judge(f, f->head) && (rc = emit(user, f->head, sizeof f->head))) return rc;
    }
  }
  if (len > run) return emit(user, data + run, len - run);
  return 0;
}
