/* pd_keymap.c -- linear probing with backward-shift deletion; see pd_keymap.h. */
#include "pd_keymap.h"

#include <stdlib.h>

#include "pd_err.h"
#include "pd_fault.h"

static uint64_t home(const pd_keymap *m, uint64_t key_lo) {
  return key_lo & m->mask;
}

int pd_keymap_init(pd_keymap *m, uint64_t initial_capacity) {
  uint64_t cap = 16;
  while (cap < initial_capacity) cap <<= 1;
  m->slots = pd_fault_hit(PD_FAULT_ALLOC) ? NULL : calloc(cap, sizeof *m->slots);
  if (!m->slots) return PD_ENOMEM;
  m->mask = cap - 1;
  m->count = 0;
  return PD_OK;
}

void pd_keymap_free(pd_keymap *m) {
  free(m->slots);
  m->slots = NULL;
  m->count = 0;
}

static void put(pd_keymap_slot *slots, uint64_t mask, uint64_t key_lo, uint32_t node) {
  uint64_t i = key_lo & mask;
  while (slots[i].node_plus1) i = (i + 1) & mask;
  slots[i] = (pd_keymap_slot){key_lo, node + 1, 0};
}

static int grow(pd_keymap *m) {
  uint64_t cap = (m->mask + 1) * 2;
  pd_keymap_slot *n = pd_fault_hit(PD_FAULT_ALLOC) ? NULL : calloc(cap, sizeof *n);
  if (!n) return PD_ENOMEM;
  for (uint64_t i = 0; i <= m->mask; i++)
    if (m->slots[i].node_plus1) put(n, cap - 1, m->slots[i].key_lo, m->slots[i].node_plus1 - 1);
  free(m->slots);
  m->slots = n;
  m->mask = cap - 1;
  return PD_OK;
}

int pd_keymap_insert(pd_keymap *m, uint64_t key_lo, uint32_t node) {
  if ((m->count + 1) * 8 > (m->mask + 1) * 7) {
    int rc = grow(m);
    if (rc) return rc;
  }
  put(m->slots, m->mask, key_lo, node);
  m->count++;
  return PD_OK;
}

int pd_keymap_remove(pd_keymap *m, uint64_t key_lo, uint32_t node) {
  uint64_t i = home(m, key_lo);
  for (;;) {
    if (!m->slots[i].node_plus1) return PD_ENOTFOUND;
    if (m->slots[i].key_lo == key_lo && m->slots[i].node_plus1 == node + 1) break;
    i = (i + 1) & m->mask;
  }
  /* Backward shift: move each later entry of the cluster into the hole if its home allows. */
  uint64_t hole = i, j = i;
  for (;;) {
    j = (j + 1) & m->mask;
    if (!m->slots[j].node_plus1) break;
    uint64_t h = home(m, m->slots[j].key_lo);
    /* j may move to hole iff h is not in the cyclic range (hole, j]. */
    int in_range = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j);
    if (!in_range) {
      m->slots[hole] = m->slots[j];
      hole = j;
    }
  }
  m->slots[hole] = (pd_keymap_slot){0, 0, 0};
  m->count--;
  return PD_OK;
}

int pd_keymap_next(const pd_keymap *m, uint64_t key_lo, uint64_t *cursor, uint32_t *node) {
  /* cursor = probe distance from home already examined */
  for (uint64_t d = *cursor; d <= m->mask; d++) {
    const pd_keymap_slot *s = &m->slots[(home(m, key_lo) + d) & m->mask];
    if (!s->node_plus1) return 0;
    if (s->key_lo == key_lo) {
      *node = s->node_plus1 - 1;
      *cursor = d + 1;
      return 1;
    }
  }
  return 0;
}

size_t pd_keymap_bytes(const pd_keymap *m) {
  return (m->mask + 1) * sizeof(pd_keymap_slot);
}
