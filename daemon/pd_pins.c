/*
 * pd_pins.c -- see pd_pins.h.
 */
#include "pd_pins.h"

#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

void pd_pins_init(pd_pins *p) {
  memset(p, 0, sizeof *p);
}

void pd_pins_free(pd_pins *p) {
  free(p->entries);
  memset(p, 0, sizeof *p);
}

/* 1 if the entry's node still exists under the same key and carries pins of its own. */
static int entry_live(const pd_radix *tree, const pd_pin_entry *e) {
  if (e->node >= tree->cap_nodes) return 0;
  const pd_node *nd = &tree->nodes[e->node];
  return (nd->flags & PD_NODE_USED) && nd->own_pins > 0 && pd_key_eq(nd->key, e->key);
}

int pd_pins_note(pd_pins *p, const pd_radix *tree, uint32_t node) {
  pd_key128 key = pd_radix_node(tree, node)->key;
  p->dirty = 1;
  for (uint32_t i = 0; i < p->n; i++)
    if (p->entries[i].node == node && pd_key_eq(p->entries[i].key, key)) return PD_OK;
  if (p->n == p->cap) {
    uint32_t ncap = p->cap ? p->cap * 2 : 16;
    pd_pin_entry *v = realloc(p->entries, ncap * sizeof *v);
    if (!v) return PD_ENOMEM;
    p->entries = v;
    p->cap = ncap;
  }
  p->entries[p->n++] = (pd_pin_entry){node, key};
  return PD_OK;
}

void pd_pins_touch(pd_pins *p) {
  p->dirty = 1;
}

static void put_u16(uint8_t *b, uint16_t v) {
  b[0] = (uint8_t)v, b[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *b, uint32_t v) {
  put_u16(b, (uint16_t)v), put_u16(b + 2, (uint16_t)(v >> 16));
}
static void put_u64(uint8_t *b, uint64_t v) {
  put_u32(b, (uint32_t)v), put_u32(b + 4, (uint32_t)(v >> 32));
}
static uint16_t get_u16(const uint8_t *b) {
  return (uint16_t)(b[0] | b[1] << 8);
}
static uint32_t get_u32(const uint8_t *b) {
  return get_u16(b) | (uint32_t)get_u16(b + 2) << 16;
}
static uint64_t get_u64(const uint8_t *b) {
  return get_u32(b) | (uint64_t)get_u32(b + 4) << 32;
}

int pd_pins_encode(pd_pins *p, const pd_radix *tree, uint64_t now_ms, int64_t unix_ms,
                   uint8_t **out, size_t *len) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < p->n; i++)
    if (entry_live(tree, &p->entries[i])) p->entries[kept++] = p->entries[i];
  p->n = kept;
  size_t bytes = 12 + (size_t)kept * PD_PINS_RECORD_SIZE;
  uint8_t *buf = calloc(1, bytes);
  if (!buf) return PD_ENOMEM;
  put_u32(buf, PD_PINS_MAGIC);
  put_u32(buf + 4, 1);
  put_u32(buf + 8, kept);
  for (uint32_t i = 0; i < kept; i++) {
    const pd_node *nd = pd_radix_node(tree, p->entries[i].node);
    uint8_t *r = buf + 12 + (size_t)i * PD_PINS_RECORD_SIZE;
    put_u64(r, nd->key.lo);
    put_u64(r + 8, nd->key.hi);
    put_u16(r + 16, nd->own_pins);
    /* the tree keeps one expiry per node, the latest of the pins covering it: where a descendant
     * is pinned for longer, the node's own pins are stored with that later time */
    int64_t until = 0;
    if (nd->pin_until != PD_PIN_FOREVER)
      until = unix_ms + (nd->pin_until > now_ms ? (int64_t)(nd->pin_until - now_ms) : 0);
    put_u64(r + 24, (uint64_t)until);
  }
  p->dirty = 0;
  p->last_save_ms = now_ms;
  *out = buf;
  *len = bytes;
  return PD_OK;
}

int pd_pins_restore(pd_pins *p, pd_radix *tree, const uint8_t *buf, size_t len, uint64_t now_ms,
                    int64_t unix_ms, uint32_t *n_restored, uint32_t *n_gone) {
  *n_restored = *n_gone = 0;
  if (len < 12 || get_u32(buf) != PD_PINS_MAGIC || get_u32(buf + 4) != 1) return PD_ECORRUPT;
  uint32_t count = get_u32(buf + 8);
  if ((len - 12) / PD_PINS_RECORD_SIZE < count || (len - 12) % PD_PINS_RECORD_SIZE)
    return PD_ECORRUPT;
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *r = buf + 12 + (size_t)i * PD_PINS_RECORD_SIZE;
    pd_key128 key = {get_u64(r), get_u64(r + 8)};
    uint16_t own = get_u16(r + 16);
    int64_t until_unix = (int64_t)get_u64(r + 24);
    uint32_t node;
    if (own == 0 || (until_unix && until_unix <= unix_ms) || pd_radix_find(tree, key, &node)) {
      (*n_gone)++;
      continue;
    }
    uint64_t until = until_unix ? now_ms + (uint64_t)(until_unix - unix_ms) : PD_PIN_FOREVER;
    uint16_t done = 0;
    while (done < own && pd_radix_pin(tree, node, until) == PD_OK) done++;
    if (!done) {
      (*n_gone)++;
      continue;
    }
    int rc = pd_pins_note(p, tree, node);
    if (rc) return rc;
    (*n_restored)++;
  }
  p->dirty = 0;
  return PD_OK;
}
