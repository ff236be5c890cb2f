/*
 * pd_pins.h -- the engine's registry of pinned prefixes, so pins survive a restart.
 *
 * A pin lives in the radix tree (own_pins and pin_until on the pinned node); this registry only
 * remembers which nodes were pinned, by node id and key, so the pins can be written out without
 * walking the tree. Pinned prefixes are written through to the disk tier (pd_tiers_keep); the
 * pins themselves are stored beside them as one value, "pins", in the disk store's "meta"
 * database, rewritten by the storage worker after the blocks it follows. At start, after the disk
 * tier is rebuilt, each stored pin whose prefix came back is taken again for the time it had
 * left. Expiry times are stored as wall-clock (unix) milliseconds, since the engine's clock is
 * monotonic and restarts with the machine.
 *
 * Encoding (little-endian): u32 magic 'PDPN', u32 version (1), u32 count, then count records of
 * 32 bytes: u8[16] node key, u16 own pins, u16 reserved (0), u32 reserved (0), i64 expiry in unix
 * ms (0: no expiry).
 *
 * Entries go stale when a pin goes (unpin, expiry, eviction): they are pruned when the registry
 * is encoded, by checking the node still carries the same key and its own pins. Threads: the
 * engine thread only.
 */
#ifndef PD_PINS_H
#define PD_PINS_H

#include <stddef.h>
#include <stdint.h>

#include "pd_radix.h"

#define PD_PINS_MAGIC       0x4e504450u /* "PDPN" */
#define PD_PINS_RECORD_SIZE 32

typedef struct pd_pin_entry {
  uint32_t node;
  pd_key128 key;
} pd_pin_entry;

typedef struct pd_pins {
  pd_pin_entry *entries; /* (cap) */
  uint32_t n, cap;
  int dirty;             /* changed since the last encode */
  uint64_t last_save_ms; /* engine clock of the last encode */
} pd_pins;

void pd_pins_init(pd_pins *p);
void pd_pins_free(pd_pins *p);

/* Records that node was pinned (once per node). Returns 0 or PD_ENOMEM. */
int pd_pins_note(pd_pins *p, const pd_radix *tree, uint32_t node);
/* Marks the registry changed (a pin went: unpin, expiry, eviction). */
void pd_pins_touch(pd_pins *p);

/* Prunes stale entries and encodes the rest. *out (owned by the caller, free) gets *len bytes.
 * now_ms is the engine's clock, unix_ms the wall clock at the same moment. Clears dirty. */
int pd_pins_encode(pd_pins *p, const pd_radix *tree, uint64_t now_ms, int64_t unix_ms,
                   uint8_t **out, size_t *len);

/* Takes again the pins of buf (from pd_pins_encode) whose nodes are in the tree and whose time
 * is not over, and records them. *n_restored gets the prefixes pinned again, *n_gone those whose
 * blocks did not come back or whose time ran out. Returns 0, PD_ECORRUPT (nothing pinned), or
 * PD_ENOMEM. */
int pd_pins_restore(pd_pins *p, pd_radix *tree, const uint8_t *buf, size_t len, uint64_t now_ms,
                    int64_t unix_ms, uint32_t *n_restored, uint32_t *n_gone);

#endif /* PD_PINS_H */
