/*
 * pd_sha256.h -- SHA-256 (FIPS 180-4), for hashing API keys at rest.
 *
 * Keys are stored only as SHA-256 digests: a leaked tenant file does not reveal a key, and
 * unlike a fast non-cryptographic hash (xxHash) SHA-256 resists crafting a second key with the
 * same digest. Written here (about 100 lines, checked against hashlib's vectors in tests) although
 * the daemon links OpenSSL for TLS: every request's key is hashed on the engine thread, and
 * OpenSSL 3's one-shot SHA256() allocates and fetches a digest context per call. Its failure
 * there (the fault-injection test fails each allocation in turn) turned a valid key into
 * UNAUTHENTICATED; this one cannot fail and needs no memory.
 */
#ifndef PD_SHA256_H
#define PD_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_sha256 {
  uint32_t h[8];
  uint64_t n_bytes;
  uint8_t buf[64];
  size_t n_buf;
} pd_sha256;

void pd_sha256_init(pd_sha256 *s);
void pd_sha256_update(pd_sha256 *s, const void *data, size_t n);
void pd_sha256_final(pd_sha256 *s, uint8_t digest[32]);
/* One shot. */
void pd_sha256_digest(const void *data, size_t n, uint8_t digest[32]);

#endif /* PD_SHA256_H */
