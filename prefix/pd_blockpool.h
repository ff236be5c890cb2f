/*
 * pd_blockpool.h -- fixed-size slot allocator for one tier's KV blocks.
 *
 * A pool hands out slot numbers 0 .. capacity-1; what a slot holds (device memory, host memory,
 * a disk record) is its owner's business. Alloc and free are O(1) through a stack of free slot
 * numbers; a bitmap of allocated slots catches double frees and frees of slots never handed out.
 * Lowest slots are handed out first after init, so a fresh pool fills densely.
 */
#ifndef PD_BLOCKPOOL_H
#define PD_BLOCKPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_blockpool {
  uint32_t capacity;
  uint32_t n_free;
  uint32_t *free_stack; /* (capacity) top is free_stack[n_free - 1] */
  uint64_t *allocated;  /* (capacity / 64 rounded up) bit set = slot in use */
  uint64_t n_allocs, n_frees;
} pd_blockpool;

int pd_blockpool_init(pd_blockpool *p, uint32_t capacity);
void pd_blockpool_free(pd_blockpool *p);

/* Returns 0 and a slot, or PD_EFULL. */
int pd_blockpool_alloc(pd_blockpool *p, uint32_t *slot);
/* Returns 0, or PD_EINVAL for a slot out of range or not allocated (double free). */
int pd_blockpool_release(pd_blockpool *p, uint32_t slot);

static inline uint32_t pd_blockpool_used(const pd_blockpool *p) {
  return p->capacity - p->n_free;
}
int pd_blockpool_is_allocated(const pd_blockpool *p, uint32_t slot);

#endif /* PD_BLOCKPOOL_H */
