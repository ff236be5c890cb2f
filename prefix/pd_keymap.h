/*
 * pd_keymap.h -- an open-addressing hash map from 128-bit block keys to 32-bit node ids.
 *
 * Layout: one array of 16-byte slots, a power of two in number, linear probing, at most 7/8
 * full (it doubles before that). A slot holds the key's low 64 bits and the node id + 1 (0 means
 * empty); the full key lives in the node, and the map's user compares it there. The keys are
 * already uniformly random (XXH3), so the low bits index directly. Deletion shifts later entries
 * of the cluster back (no tombstones), so probe lengths stay short after any number of deletes.
 *
 * Several entries may share low 64 bits (collisions): lookups iterate over every candidate.
 */
#ifndef PD_KEYMAP_H
#define PD_KEYMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_keymap_slot {
  uint64_t key_lo;
  uint32_t node_plus1; /* 0 = empty */
  uint32_t pad;
} pd_keymap_slot;

typedef struct pd_keymap {
  pd_keymap_slot *slots; /* (mask + 1) */
  uint64_t mask;
  uint64_t count;
} pd_keymap;

int pd_keymap_init(pd_keymap *m, uint64_t initial_capacity);
void pd_keymap_free(pd_keymap *m);

/* Adds (key_lo -> node). Duplicate key_lo values are allowed. Returns 0 or PD_ENOMEM. */
int pd_keymap_insert(pd_keymap *m, uint64_t key_lo, uint32_t node);
/* Removes the entry (key_lo -> node). Returns 0 or PD_ENOTFOUND. */
int pd_keymap_remove(pd_keymap *m, uint64_t key_lo, uint32_t node);

/* Iterates over the nodes stored under key_lo: start with *cursor = 0; each call returns 1 and
 * sets *node, or 0 when there are no more. */
int pd_keymap_next(const pd_keymap *m, uint64_t key_lo, uint64_t *cursor, uint32_t *node);

size_t pd_keymap_bytes(const pd_keymap *m);

#endif /* PD_KEYMAP_H */
