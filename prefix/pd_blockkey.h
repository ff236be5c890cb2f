/*
 * pd_blockkey.h -- chained XXH3-128 keys of token blocks.
 *
 *     k_0 = XXH3-128(namespace bytes ‖ model fingerprint (16 bytes))
 *     k_i = XXH3-128(k_{i-1} as 16 little-endian bytes (lo, then hi) ‖ block i's tokens as
 *                    little-endian int32)
 *
 * The fingerprint covers the model file, the cache dtype and the block size, so a key can never
 * name KV computed by another model or in another layout. No seed: keys are the same in every
 * process and after a restart, which is what lets the disk tier be reused. A partial block
 * (fewer than B tokens) is keyed the same way over its tokens; since the byte length differs, it
 * never shares a key with a full block except by a 128-bit collision.
 */
#ifndef PD_BLOCKKEY_H
#define PD_BLOCKKEY_H

#include <stddef.h>
#include <stdint.h>

#include "pd_key.h"

pd_key128 pd_blockkey_root(const void *ns, size_t ns_len, const uint8_t fingerprint[16]);
pd_key128 pd_blockkey_next(pd_key128 prev, const int32_t *tokens, uint32_t n_tokens);

#endif /* PD_BLOCKKEY_H */
