/* pd_blockpool.c -- see pd_blockpool.h. */
#include "pd_blockpool.h"

#include <stdlib.h>

#include "pd_err.h"
#include "pd_fault.h"

int pd_blockpool_init(pd_blockpool *p, uint32_t capacity) {
  p->capacity = capacity;
  p->n_free = capacity;
  p->n_allocs = p->n_frees = 0;
  int fail = pd_fault_hit(PD_FAULT_ALLOC);
  p->free_stack = fail ? NULL : malloc((capacity ? capacity : 1) * sizeof *p->free_stack);
  p->allocated = fail ? NULL : calloc((capacity + 63) / 64 + 1, sizeof *p->allocated);
  if (!p->free_stack || !p->allocated) {
    pd_blockpool_free(p);
    return PD_ENOMEM;
  }
  for (uint32_t i = 0; i < capacity; i++) p->free_stack[i] = capacity - 1 - i;
  return PD_OK;
}

void pd_blockpool_free(pd_blockpool *p) {
  free(p->free_stack);
  free(p->allocated);
  p->free_stack = NULL;
  p->allocated = NULL;
  p->capacity = p->n_free = 0;
}

int pd_blockpool_alloc(pd_blockpool *p, uint32_t *slot) {
  if (p->n_free == 0) return PD_EFULL;
  uint32_t s = p->free_stack[--p->n_free];
  p->allocated[s / 64] |= 1ull << (s % 64);
  p->n_allocs++;
  *slot = s;
  return PD_OK;
}

int pd_blockpool_is_allocated(const pd_blockpool *p, uint32_t slot) {
  return slot < p->capacity && (p->allocated[slot / 64] >> (slot % 64) & 1);
}

int pd_blockpool_release(pd_blockpool *p, uint32_t slot) {
  if (!pd_blockpool_is_allocated(p, slot)) return PD_EINVAL;
  p->allocated[slot / 64] &= ~(1ull << (slot % 64));
  p->free_stack[p->n_free++] = slot;
  p->n_frees++;
  return PD_OK;
}
