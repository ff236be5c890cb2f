/*
 * fuzz_kvstore_hdr.c -- libFuzzer target: the index-value decoder of the disk tier
 * (pd_kvstore_hdr_decode in storage/pd_kvstore.h).
 *
 * DESIGN
 *
 * Input: the whole fuzz input is one LMDB value as pd_kvstore_get or a scan would find it on
 * disk: [64-byte header][int32 tokens] in format 2 (the payload is in blocks.dat), or
 * [64-byte header][int32 tokens][KV payload] in format 1. libFuzzer hands over a heap buffer of
 * exactly that size, so ASan flags any read past the value's end.
 *
 * Oracles, besides the sanitizers:
 *   - the decoder returns 0, PD_ECORRUPT or PD_EUNSUPPORTED, nothing else;
 *   - a value it accepts has version 1 or 2, 1 <= n_tokens <= block_tokens and a length of
 *     exactly 64 + 4 * n_tokens (+ payload_bytes in format 1), and the tokens and the format-1
 *     payload it describes are read back byte by byte (inside the value, or ASan says so);
 *   - encode(decode(value)) gives back the value's 64 header bytes, and decoding that
 *     re-encoded header over the same body gives the same fields.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_kvstore.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_kvstore_hdr: check failed: %s (line %d)\n", #cond, __LINE__);          \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int same_header(const pd_kvstore_hdr *a, const pd_kvstore_hdr *b) {
  return a->version == b->version && a->payload_page == b->payload_page && a->dtype == b->dtype &&
         a->flags == b->flags && a->block_tokens == b->block_tokens && a->n_tokens == b->n_tokens &&
         a->payload_bytes == b->payload_bytes && !memcmp(a->fingerprint, b->fingerprint, 16) &&
         pd_key_eq(a->parent, b->parent) && a->checksum == b->checksum &&
         a->namespace_id == b->namespace_id;
}

static volatile uint32_t body_sum; /* keeps the body reads */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pd_kvstore_hdr hdr;
  memset(&hdr, 0, sizeof hdr);
  int rc = pd_kvstore_hdr_decode(data, size, &hdr);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ECORRUPT || rc == PD_EUNSUPPORTED);
  if (rc != PD_OK) return 0;

  FUZZ_CHECK(size >= PD_KVSTORE_HDR_BYTES);
  FUZZ_CHECK(hdr.version == 1 || hdr.version == 2);
  FUZZ_CHECK(hdr.n_tokens >= 1 && hdr.n_tokens <= hdr.block_tokens);
  const uint32_t inline_payload = hdr.version == 1 ? hdr.payload_bytes : 0;
  FUZZ_CHECK((uint64_t)size ==
             (uint64_t)PD_KVSTORE_HDR_BYTES + 4ull * hdr.n_tokens + inline_payload);

  /* The body the header describes lies inside the value. */
  const uint8_t *tokens = data + PD_KVSTORE_HDR_BYTES;
  const uint8_t *payload = tokens + 4u * hdr.n_tokens;
  uint32_t sum = 0;
  for (uint32_t i = 0; i < hdr.n_tokens; i++) {
    int32_t tok;
    memcpy(&tok, tokens + 4u * i, 4);
    sum += (uint32_t)tok;
  }
  for (uint32_t i = 0; i < inline_payload; i++) sum += payload[i];
  body_sum = sum;

  /* Round trip through the encoder. */
  uint8_t *again = malloc(size);
  FUZZ_CHECK(again != NULL);
  pd_kvstore_hdr_encode(&hdr, again);
  FUZZ_CHECK(memcmp(again, data, PD_KVSTORE_HDR_BYTES) == 0);
  memcpy(again + PD_KVSTORE_HDR_BYTES, data + PD_KVSTORE_HDR_BYTES, size - PD_KVSTORE_HDR_BYTES);
  pd_kvstore_hdr hdr2;
  memset(&hdr2, 0, sizeof hdr2);
  FUZZ_CHECK(pd_kvstore_hdr_decode(again, size, &hdr2) == PD_OK);
  FUZZ_CHECK(same_header(&hdr, &hdr2));
  free(again);
  return 0;
}
