/*
 * test_h2_filter.c -- the RST_STREAM filter in front of nghttp2 (daemon/pd_h2_filter.h).
 *
 * A client byte stream is built from frames (preface, SETTINGS, HEADERS for streams 1 and 3,
 * DATA, an RST_STREAM for the open stream 3, RST_STREAMs for the never-opened streams 5 and 7,
 * a malformed 5-byte RST_STREAM on stream 9, an RST_STREAM on even stream 2, a PING, HEADERS for
 * 11 and its reset) and fed to the filter cut at every position into two reads, and in reads of
 * 1 byte; what comes out must be the stream without exactly the two RST_STREAM frames for
 * streams 5 and 7, whatever the cut.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_h2_filter.h"

typedef struct sink {
  uint8_t buf[1024];
  size_t n;
  int calls;
} sink;

static int collect(void *user, const uint8_t *data, size_t len) {
  sink *s = user;
  ck_assert_uint_gt(len, 0);
  ck_assert_uint_le(s->n + len, sizeof s->buf);
  memcpy(s->buf + s->n, data, len);
  s->n += len;
  s->calls++;
  return 0;
}

static size_t frame(uint8_t *out, uint8_t type, uint32_t stream, const uint8_t *payload,
                    uint32_t len) {
  out[0] = (uint8_t)(len >> 16), out[1] = (uint8_t)(len >> 8), out[2] = (uint8_t)len;
  out[3] = type, out[4] = 0;
  out[5] = (uint8_t)(stream >> 24), out[6] = (uint8_t)(stream >> 16);
  out[7] = (uint8_t)(stream >> 8), out[8] = (uint8_t)stream;
  if (len) memcpy(out + 9, payload, len);
  return 9 + len;
}

/* in: the whole client stream; want: the same without the frames that must be dropped */
static uint8_t in[1024], want[1024];
static size_t n_in, n_want;

static void add(const uint8_t *f, size_t len, int keep) {
  memcpy(in + n_in, f, len);
  n_in += len;
  if (keep) {
    memcpy(want + n_want, f, len);
    n_want += len;
  }
}

static void build(void) {
  static const uint8_t cancel[4] = {0, 0, 0, 8}, bad[5] = {0, 0, 0, 8, 0};
  static const uint8_t ping[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  static const uint8_t hpack[6] = {0x83, 0x86, 0x84, 0x41, 0x01, 'x'};
  static const uint8_t data[7] = {0, 0, 0, 0, 2, 'h', 'i'};
  uint8_t f[64];
  n_in = n_want = 0;
  add((const uint8_t *)"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24, 1);
  add(f, frame(f, 0x4, 0, NULL, 0), 1);              /* SETTINGS */
  add(f, frame(f, 0x1, 1, hpack, sizeof hpack), 1);  /* HEADERS opens 1 */
  add(f, frame(f, 0x0, 1, data, sizeof data), 1);    /* DATA */
  add(f, frame(f, 0x1, 3, hpack, sizeof hpack), 1);  /* HEADERS opens 3 */
  add(f, frame(f, 0x3, 3, cancel, 4), 1);            /* reset of an open stream */
  add(f, frame(f, 0x3, 5, cancel, 4), 0);            /* never opened: dropped */
  add(f, frame(f, 0x3, 7, cancel, 4), 0);            /* never opened: dropped */
  add(f, frame(f, 0x3, 9, bad, 5), 1);               /* malformed: nghttp2 refuses it */
  add(f, frame(f, 0x3, 2, cancel, 4), 1);            /* even id: nghttp2's to judge */
  add(f, frame(f, 0x6, 0, ping, 8), 1);              /* PING */
  add(f, frame(f, 0x1, 11, hpack, sizeof hpack), 1); /* opens 11 */
  add(f, frame(f, 0x3, 11, cancel, 4), 1);           /* so its reset passes */
}

START_TEST(every_cut_in_two) {
  build();
  for (size_t cut = 0; cut <= n_in; cut++) {
    pd_h2_filter flt;
    sink s = {.n = 0};
    pd_h2_filter_init(&flt);
    ck_assert_int_eq(pd_h2_filter_feed(&flt, in, cut, collect, &s), 0);
    ck_assert_int_eq(pd_h2_filter_feed(&flt, in + cut, n_in - cut, collect, &s), 0);
    ck_assert_msg(s.n == n_want && !memcmp(s.buf, want, n_want), "cut at %zu", cut);
    ck_assert_uint_eq(flt.dropped_frames, 2);
    ck_assert_uint_eq(flt.max_stream_id, 11);
  }
}
END_TEST

START_TEST(byte_by_byte) {
  build();
  pd_h2_filter flt;
  sink s = {.n = 0};
  pd_h2_filter_init(&flt);
  for (size_t i = 0; i < n_in; i++)
    ck_assert_int_eq(pd_h2_filter_feed(&flt, in + i, 1, collect, &s), 0);
  ck_assert(s.n == n_want && !memcmp(s.buf, want, n_want));
  ck_assert_uint_eq(flt.dropped_frames, 2);
}
END_TEST

START_TEST(whole_stream_in_two_runs) {
  build();
  pd_h2_filter flt;
  sink s = {.n = 0};
  pd_h2_filter_init(&flt);
  ck_assert_int_eq(pd_h2_filter_feed(&flt, in, n_in, collect, &s), 0);
  ck_assert(s.n == n_want && !memcmp(s.buf, want, n_want));
  ck_assert_int_eq(s.calls, 2); /* before the two dropped frames, and after them */
}
END_TEST

static int refuse(void *user, const uint8_t *data, size_t len) {
  (void)data, (void)len;
  ++*(int *)user;
  return 7;
}

START_TEST(emit_error_stops_the_scan) {
  build();
  pd_h2_filter flt;
  int calls = 0;
  pd_h2_filter_init(&flt);
  ck_assert_int_eq(pd_h2_filter_feed(&flt, in, n_in, refuse, &calls), 7);
  ck_assert_int_eq(calls, 1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("h2_filter");
  TCase *tc = tcase_create("filter");
  tcase_add_test(tc, every_cut_in_two);
  tcase_add_test(tc, byte_by_byte);
  tcase_add_test(tc, whole_stream_in_two_runs);
  tcase_add_test(tc, emit_error_stops_the_scan);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
