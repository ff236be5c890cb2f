/*
 * pd_key.h -- the 128-bit block key. A block's key is XXH3-128 chained over the tokens of every
 * block before it (prefix/pd_blockkey.h), so it names the block's whole prefix. The same value
 * keys the radix tree's hash map, the disk store and the prefix ids that kvctl prints.
 */
#ifndef PD_KEY_H
#define PD_KEY_H

#include <stdint.h>
#include <stdio.h>

typedef struct pd_key128 {
  uint64_t lo, hi;
} pd_key128;

static inline int pd_key_eq(pd_key128 a, pd_key128 b) {
  return a.lo == b.lo && a.hi == b.hi;
}

/* 32 lowercase hex digits, hi then lo, NUL-terminated: out needs 33 bytes. */
static inline void pd_key_hex(pd_key128 k, char out[33]) {
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)k.hi, (unsigned long long)k.lo);
}

/* Parses 32 hex digits (as written by pd_key_hex). Returns 0, or -1 if s is not such a string. */
static inline int pd_key_parse(const char *s, pd_key128 *out) {
  uint64_t part[2] = {0, 0};
  for (int i = 0; i < 32; i++) {
    char c = s[i];
    int v = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (v < 0) return -1;
    part[i / 16] = (part[i / 16] << 4) | (uint64_t)v;
  }
  if (s[32] != 0) return -1;
  out->hi = part[0];
  out->lo = part[1];
  return 0;
}

#endif /* PD_KEY_H */
