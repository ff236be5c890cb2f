/* pd_blockkey.c -- see pd_blockkey.h. The byte order is fixed (little-endian) so that keys
 * written to disk on one machine are valid on another. */
#include "pd_blockkey.h"

#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

static pd_key128 from_xxh(XXH128_hash_t h) {
  return (pd_key128){h.low64, h.high64};
}

pd_key128 pd_blockkey_root(const void *ns, size_t ns_len, const uint8_t fingerprint[16]) {
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, ns, ns_len);
  XXH3_128bits_update(&st, fingerprint, 16);
  return from_xxh(XXH3_128bits_digest(&st));
}

pd_key128 pd_blockkey_next(pd_key128 prev, const int32_t *tokens, uint32_t n_tokens) {
  /* One contiguous buffer: 16 bytes of key, then up to 256 tokens (B <= 256). */
  uint8_t buf[16 + 4 * 256];
  for (int i = 0; i < 8; i++) {
    buf[i] = (uint8_t)(prev.lo >> (8 * i));
    buf[8 + i] = (uint8_t)(prev.hi >> (8 * i));
  }
  if (n_tokens > 256) n_tokens = 256;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(buf + 16, tokens, 4u * n_tokens);
#else
  for (uint32_t t = 0; t < n_tokens; t++)
    for (int i = 0; i < 4; i++)
      buf[16 + 4 * t + (uint32_t)i] = (uint8_t)((uint32_t)tokens[t] >> (8 * i));
#endif
  return from_xxh(XXH3_128bits(buf, 16 + 4u * n_tokens));
}
