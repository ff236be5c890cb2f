/*
 * pd_json_schema.c -- see pd_json_schema.h.
 *
 * Compiling: every schema becomes a node (allowed types as bits, an object's properties as a
 * contiguous run of the property table, an array's item node, an enum's values as compact JSON
 * texts in a byte pool). "$ref" returns the referenced definition's node, compiled once, so a
 * recursive schema is a cycle in the table. Parsing the schema is jansson's job (it is JSON).
 *
 * Reading: a stack of frames, one per open object or array the schema describes; keys and enum
 * values are matched byte by byte against the candidates still possible (a bit each); strings,
 * numbers, literals and values the schema leaves free are read by an embedded pd_json_state. A
 * number ends on the first byte that cannot continue it, which is then read again as what follows
 * the value.
 */
#include "pd_json_schema.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_regex.h"

enum type_bits {
  T_OBJECT = 1,
  T_ARRAY = 2,
  T_STRING = 4,
  T_NUMBER = 8,
  T_INTEGER = 16,
  T_BOOLEAN = 32,
  T_NULL = 64,
  T_ALL = 127
};

typedef struct schema_node {
  uint8_t types;     /* T_ bits */
  uint8_t has_props; /* an object with "properties": only those, in order */
  uint8_t has_items; /* an array with "items" */
  uint8_t has_map;   /* an object without "properties" whose values are map_value's */
  uint8_t n_props;
  uint8_t n_enum; /* > 0: one of the values enum[first_enum ..] */
  uint8_t resolved;
  uint8_t n_alts; /* > 1: a union of objects told apart by their first property (its one
                     property here, an enum of their constants): alts[first_alt ..] */
  uint16_t first_prop, first_enum, items, first_alt, map_value;
  uint16_t string_rule; /* > 0: strings match regexes[string_rule - 1] (pattern, format, length) */
  uint16_t number_rule; /* > 0: numbers lie within bounds[number_rule - 1] */
  uint32_t min_items, max_items;
  uint64_t required; /* bit i: props[first_prop + i] is required */
} schema_node;

typedef struct prop {
  uint32_t name; /* offset in pool */
  uint16_t len, node;
} prop;

typedef struct enum_value {
  uint32_t text, len; /* compact JSON, in pool */
} enum_value;

struct pd_json_schema {
  schema_node *nodes;
  prop *props;
  enum_value *values;
  uint16_t *alts; /* unions' alternatives: node indices */
  char *pool;
  pd_regex **regexes;    /* (n_regexes) owned: the constrained strings' automata */
  pd_num_bounds *bounds; /* (n_bounds) the bounded numbers' bounds */
  uint32_t n_nodes, n_props, n_values, cap_nodes, cap_props, cap_values, n_alts, cap_alts;
  uint32_t n_regexes, cap_regexes, n_bounds, cap_bounds;
  size_t n_pool, cap_pool;
};

void pd_json_schema_free(pd_json_schema *s) {
  if (!s) return;
  free(s->nodes);
  free(s->props);
  free(s->values);
  free(s->alts);
  free(s->pool);
  for (uint32_t i = 0; i < s->n_regexes; i++) pd_regex_free(s->regexes[i]);
  free(s->regexes);
  free(s->bounds);
  free(s);
}

/* ---- compiling ------------------------------------------------------------------------------- */

/* An anyOf, merged once the whole schema is compiled (its alternatives may be definitions still
 * being compiled when it is met: a recursive Optional). */
typedef struct pending_any_of {
  int node;
  int n_alts;
  const char *keyword; /* "anyOf", or "oneOf": then the alternatives must not overlap */
  int alts[64];
  char where[96];
} pending_any_of;

typedef struct compiler {
  pd_json_schema *s;
  json_t *root;
  json_t *defs_names; /* object: definition path -> node index */
  pending_any_of *pending;
  int n_pending, cap_pending;
  int too_big; /* names and enum values over PD_SCHEMA_MAX_POOL */
  char *err;
  size_t errlen;
  int oom;
} compiler;

#define FAIL(...) return snprintf(c->err, c->errlen, __VA_ARGS__), -1

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size) {
  if (need <= *cap) return 0;
  uint32_t n = *cap ? *cap * 2 : 16;
  while (n < need) n *= 2;
  void *q = realloc(*p, (size_t)n * size);
  if (!q) return -1;
  *p = q;
  *cap = n;
  return 0;
}

static int new_node(compiler *c) {
  pd_json_schema *s = c->s;
  if (s->n_nodes == PD_SCHEMA_MAX_NODES)
    FAIL("the schema has more than %d subschemas", PD_SCHEMA_MAX_NODES);
  if (grow((void **)&s->nodes, &s->cap_nodes, s->n_nodes + 1, sizeof(schema_node))) {
    c->oom = 1;
    FAIL("out of memory");
  }
  memset(&s->nodes[s->n_nodes], 0, sizeof(schema_node));
  return (int)s->n_nodes++;
}

/* Copies n bytes into the pool; their offset, or -1. */
static int64_t pool_add(compiler *c, const char *bytes, size_t n) {
  pd_json_schema *s = c->s;
  if (!n) return (int64_t)s->n_pool; /* an empty name */
  if (s->n_pool + n > PD_SCHEMA_MAX_POOL) {
    c->too_big = 1;
    return -1;
  }
  if (s->n_pool + n > s->cap_pool) {
    size_t cap = s->cap_pool ? s->cap_pool * 2 : 1024;
    while (cap < s->n_pool + n) cap *= 2;
    char *p = realloc(s->pool, cap);
    if (!p) return c->oom = 1, -1;
    s->pool = p;
    s->cap_pool = cap;
  }
  memcpy(s->pool + s->n_pool, bytes, n);
  s->n_pool += n;
  return (int64_t)(s->n_pool - n);
}

static const char *const annotations[] = {"title",
                                          "description",
                                          "default",
                                          "examples",
                                          "$schema",
                                          "$id",
                                          "$comment",
                                          "deprecated",
                                          "readOnly",
                                          "writeOnly",
                                          "$defs",
                                          "definitions",
                                          "additionalProperties",
                                          "discriminator"};
static const char *const supported[] = {"type",     "properties", "required", "items",
                                        "minItems", "maxItems",   "enum",     "const",
                                        "anyOf",    "oneOf",      "nullable", "$ref"};
/* The keywords that constrain a string or a number (a node's string_rule, number_rule). */
static const char *const leaf_keywords[] = {"pattern",          "format",          "minLength",
                                            "maxLength",        "minimum",         "maximum",
                                            "exclusiveMinimum", "exclusiveMaximum"};
#define COUNT(list) (sizeof list / sizeof *list)

static int in_list(const char *key, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(key, list[i])) return 1;
  return 0;
}

static int compile(compiler *c, json_t *schema, const char *where);
static int compile_into(compiler *c, json_t *schema, int idx, const char *where);

/* The node "$ref" names: "#" (the root) or a definition, compiled on first use. */
static int resolve_ref(compiler *c, json_t *ref, const char *where) {
  const char *r = json_string_value(ref);
  if (!r) FAIL("'$ref' must be a string (at %s)", where);
  if (!strcmp(r, "#")) return 0;
  json_t *known = json_object_get(c->defs_names, r);
  if (known) return (int)json_integer_value(known);
  const char *name = NULL;
  json_t *defs = NULL;
  if (!strncmp(r, "#/$defs/", 8))
    name = r + 8, defs = json_object_get(c->root, "$defs");
  else if (!strncmp(r, "#/definitions/", 14))
    name = r + 14, defs = json_object_get(c->root, "definitions");
  json_t *def = name && !strchr(name, '/') ? json_object_get(defs, name) : NULL;
  if (!def) FAIL("'$ref' '%.80s' does not name a definition of this schema (at %s)", r, where);
  int idx = new_node(c);
  if (idx < 0) return -1;
  json_t *i = json_integer(idx);
  if (!i || json_object_set_new(c->defs_names, r, i)) {
    c->oom = 1;
    FAIL("out of memory");
  }
  /* compiled into the node the ref (and any recursion) points to */
  return compile_into(c, def, idx, r) ? -1 : idx;
}

static int add_enum(compiler *c, schema_node *n, json_t *values, const char *where) {
  size_t count = json_array_size(values);
  if (!json_is_array(values) || !count) FAIL("'enum' must be a non-empty array (at %s)", where);
  if (count > PD_SCHEMA_MAX_ENUM)
    FAIL("'enum' has more than %d values (at %s)", PD_SCHEMA_MAX_ENUM, where);
  pd_json_schema *s = c->s;
  if (grow((void **)&s->values, &s->cap_values, s->n_values + (uint32_t)count,
           sizeof(enum_value))) {
    c->oom = 1;
    FAIL("out of memory");
  }
  n->first_enum = (uint16_t)s->n_values;
  for (size_t i = 0; i < count; i++) {
    char *text = json_dumps(json_array_get(values, i), JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
      c->oom = 1;
      FAIL("out of memory");
    }
    /* the value must be one the JSON grammar can produce, as it is written */
    pd_json_state js;
    pd_json_init(&js, 0);
    size_t len = strlen(text);
    int ok = len <= 1024 && pd_json_feed(&js, text, len) && pd_json_complete(&js);
    int64_t off = ok ? pool_add(c, text, len) : -1;
    free(text);
    if (!ok) FAIL("enum value %zu is over 1 KiB or not writable as JSON (at %s)", i, where);
    if (off < 0 && c->too_big)
      FAIL("the schema's names and enum values exceed %d bytes", PD_SCHEMA_MAX_POOL);
    if (off < 0) FAIL("out of memory");
    s->values[s->n_values++] = (enum_value){(uint32_t)off, (uint32_t)len};
  }
  n->n_enum = (uint8_t)count;
  return 0;
}

static int type_bits(compiler *c, json_t *type, const char *where) {
  static const char *const names[] = {"object",  "array",   "string", "number",
                                      "integer", "boolean", "null"};
  int bits = 0;
  size_t n = json_is_array(type) ? json_array_size(type) : 1;
  for (size_t i = 0; i < n; i++) {
    json_t *t = json_is_array(type) ? json_array_get(type, i) : type;
    const char *name = json_string_value(t);
    int found = 0;
    for (int k = 0; name && k < 7; k++)
      if (!strcmp(name, names[k])) bits |= 1 << k, found = 1;
    if (!found) FAIL("'type' must name JSON types (at %s)", where);
  }
  if (!bits) FAIL("'type' is an empty list (at %s)", where);
  return bits;
}

static int add_properties(compiler *c, int idx, json_t *props, json_t *required,
                          const char *where) {
  if (!json_is_object(props)) FAIL("'properties' must be an object (at %s)", where);
  size_t count = json_object_size(props);
  if (count > PD_SCHEMA_MAX_PROPS)
    FAIL("an object has more than %d properties (at %s)", PD_SCHEMA_MAX_PROPS, where);
  prop local[PD_SCHEMA_MAX_PROPS];
  const char *key;
  json_t *sub;
  size_t i = 0;
  json_object_foreach(props, key, sub) {
    size_t len = strlen(key);
    for (size_t k = 0; k < len; k++)
      if ((unsigned char)key[k] < 0x20 || key[k] == '"' || key[k] == '\\')
        FAIL("property name '%.40s' needs escaping, which is not supported (at %s)", key, where);
    if (len > 256) FAIL("property name '%.40s...' is over 256 bytes (at %s)", key, where);
    int64_t off = pool_add(c, key, len);
    if (off < 0 && c->too_big)
      FAIL("the schema's names and enum values exceed %d bytes", PD_SCHEMA_MAX_POOL);
    if (off < 0) FAIL("out of memory");
    char path[160];
    snprintf(path, sizeof path, "%.100s/%.50s", where, key);
    int child = compile(c, sub, path);
    if (child < 0) return -1;
    local[i++] = (prop){(uint32_t)off, (uint16_t)len, (uint16_t)child};
  }
  uint64_t req = 0;
  if (required) {
    if (!json_is_array(required)) FAIL("'required' must be an array (at %s)", where);
    for (size_t r = 0; r < json_array_size(required); r++) {
      const char *name = json_string_value(json_array_get(required, r));
      if (!name) FAIL("'required' must list strings (at %s)", where);
      size_t k = 0;
      while (k < count && (local[k].len != strlen(name) ||
                           memcmp(c->s->pool + local[k].name, name, local[k].len)))
        k++;
      if (k == count)
        FAIL("'required' names '%.40s', which is not in 'properties' (at %s)", name, where);
      req |= 1ull << k;
    }
  }
  pd_json_schema *s = c->s;
  if (grow((void **)&s->props, &s->cap_props, s->n_props + (uint32_t)count, sizeof(prop))) {
    c->oom = 1;
    FAIL("out of memory");
  }
  if (count) memcpy(s->props + s->n_props, local, count * sizeof *local);
  schema_node *n = &s->nodes[idx];
  n->first_prop = (uint16_t)s->n_props;
  n->n_props = (uint8_t)count;
  n->required = req;
  n->has_props = 1;
  s->n_props += (uint32_t)count;
  return 0;
}

static int get_count(compiler *c, json_t *schema, const char *key, uint32_t dflt, uint32_t *out,
                     const char *where) {
  json_t *v = json_object_get(schema, key);
  *out = dflt;
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 65535)
    FAIL("'%s' must be an integer from 0 to 65535 (at %s)", key, where);
  *out = (uint32_t)json_integer_value(v);
  return 0;
}

/* anyOf: its alternatives compiled now, merged later (merge_pending). */
static int record_any_of(compiler *c, int idx, const char *keyword, json_t *alts,
                         const char *where) {
  size_t count = json_array_size(alts);
  if (!json_is_array(alts) || !count)
    FAIL("'%s' must be a non-empty array (at %s)", keyword, where);
  if (count > 64) FAIL("'%s' has more than 64 alternatives (at %s)", keyword, where);
  if (c->n_pending == c->cap_pending) {
    int cap = c->cap_pending ? c->cap_pending * 2 : 8;
    pending_any_of *p = realloc(c->pending, (size_t)cap * sizeof *p);
    if (!p) {
      c->oom = 1;
      FAIL("out of memory");
    }
    c->pending = p, c->cap_pending = cap;
  }
  int slot = c->n_pending++;
  c->pending[slot].node = idx;
  c->pending[slot].n_alts = (int)count;
  c->pending[slot].keyword = keyword;
  snprintf(c->pending[slot].where, sizeof c->pending[slot].where, "%s", where);
  for (size_t i = 0; i < count; i++) {
    char path[160];
    snprintf(path, sizeof path, "%.100s/%s/%zu", where, keyword, i);
    int alt = compile(c, json_array_get(alts, i), path);
    if (alt < 0) return -1;
    c->pending[slot].alts[i] = alt; /* c->pending may have moved */
  }
  return 0;
}

/* The index of object node a's required property named name (len bytes in the pool) whose value
 * is one string constant; -1 if it has none. */
static int constant_prop(const pd_json_schema *s, const schema_node *a, uint32_t name,
                         uint16_t len) {
  if ((a->types & ~T_NULL) != T_OBJECT || !a->has_props) return -1;
  for (int j = 0; j < a->n_props; j++) {
    const prop *d = &s->props[a->first_prop + j];
    const schema_node *dn = &s->nodes[d->node];
    if (d->len == len && !memcmp(s->pool + d->name, s->pool + name, len) &&
        ((a->required >> j) & 1) && dn->n_enum == 1 &&
        s->pool[s->values[dn->first_enum].text] == '"')
      return j;
  }
  return -1;
}

/* The discriminator of a union: the first property of the first object alternative that every
 * object alternative has, required, holding a string constant. 0 and *name set, or -1. */
static int find_discriminator(const pd_json_schema *s, const pending_any_of *p, uint32_t *name,
                              uint16_t *len) {
  const schema_node *first = NULL;
  for (int i = 0; i < p->n_alts && !first; i++)
    if (s->nodes[p->alts[i]].types != T_NULL || s->nodes[p->alts[i]].n_enum)
      first = &s->nodes[p->alts[i]];
  for (int j = 0; first && first->has_props && j < first->n_props; j++) {
    const prop *d = &s->props[first->first_prop + j];
    int everywhere = 1;
    for (int i = 0; i < p->n_alts && everywhere; i++) {
      const schema_node *a = &s->nodes[p->alts[i]];
      if (a->types == T_NULL && !a->n_enum) continue;
      everywhere = constant_prop(s, a, d->name, d->len) >= 0;
    }
    if (everywhere) return *name = d->name, *len = d->len, 0;
  }
  return -1;
}

/* Node alt with its property k moved to the front (the others in their order, required bits
 * following them): alt itself when k is 0, else a new node. -1 on failure. */
static int hoisted(compiler *c, int alt, int k) {
  if (k == 0) return alt;
  pd_json_schema *s = c->s;
  int idx = new_node(c);
  if (idx < 0) return -1;
  schema_node n = s->nodes[alt];
  if (grow((void **)&s->props, &s->cap_props, s->n_props + n.n_props, sizeof(prop))) {
    c->oom = 1;
    FAIL("out of memory");
  }
  uint32_t at = s->n_props;
  uint64_t required = (n.required >> k) & 1;
  s->props[at] = s->props[n.first_prop + k];
  for (int j = 0, to = 1; j < n.n_props; j++) {
    if (j == k) continue;
    s->props[at + to] = s->props[n.first_prop + j];
    required |= ((n.required >> j) & 1) << to++;
  }
  s->n_props += n.n_props;
  n.first_prop = (uint16_t)at;
  n.required = required;
  s->nodes[idx] = n;
  return idx;
}

/* An anyOf (or oneOf) of object schemas that all have a required property of the same name
 * holding a distinct string constant (a discriminator: pydantic's tagged unions, a tool call
 * among several functions): node idx becomes an object whose one property is that name with an
 * enum of the constants; once its value is read, the reader goes on with the alternative it
 * names, whose other properties follow in their order (the discriminator is generated first
 * wherever the alternative lists it: the order of an object's members carries no meaning). */
static int merge_union(compiler *c, const pending_any_of *p) {
  const char *where = p->where;
  pd_json_schema *s = c->s;
  uint32_t name = 0;
  uint16_t name_len = 0;
  if (find_discriminator(s, p, &name, &name_len))
    FAIL("'%s' of object schemas needs a required property of the same name in each whose value "
         "is a distinct string constant (at %s)",
         p->keyword, where);
  json_t *consts = json_array();
  if (!consts) return c->oom = 1, -1;
  int objs[64], n_objs = 0, nullable = 0, rc = 0;
  for (int i = 0; i < p->n_alts && !rc; i++) {
    const schema_node *a = &s->nodes[p->alts[i]];
    if (a->types == T_NULL && !a->n_enum) { /* Optional[Union[...]] */
      nullable = 1;
      continue;
    }
    int k = constant_prop(s, a, name, name_len);
    const schema_node *dn = &s->nodes[s->props[a->first_prop + k].node];
    const enum_value *v = &s->values[dn->first_enum];
    json_t *value = json_loadb(s->pool + v->text, v->len, JSON_DECODE_ANY, NULL);
    for (size_t j = 0; value && j < json_array_size(consts) && !rc; j++)
      if (json_equal(json_array_get(consts, j), value)) {
        snprintf(c->err, c->errlen,
                 "'%s' has two alternatives whose '%.*s' is the same constant (at %s)", p->keyword,
                 (int)name_len, s->pool + name, where);
        rc = -1;
      }
    if (!rc && (!value || json_array_append(consts, value))) c->oom = 1, rc = -1;
    json_decref(value);
    if (!rc && (objs[n_objs++] = hoisted(c, p->alts[i], k)) < 0) rc = -1;
  }
  schema_node merged = {0};
  if (!rc) rc = add_enum(c, &merged, consts, where); /* the constants, in the alternatives' order */
  json_decref(consts);
  if (rc) return -1;
  int enum_node = new_node(c);
  if (enum_node < 0) return -1;
  merged.resolved = 1;
  s->nodes[enum_node] = merged;
  if (grow((void **)&s->props, &s->cap_props, s->n_props + 1, sizeof(prop)) ||
      grow((void **)&s->alts, &s->cap_alts, s->n_alts + (uint32_t)n_objs, sizeof *s->alts))
    return c->oom = 1, -1;
  schema_node u = {.types = T_OBJECT,
                   .has_props = 1,
                   .n_props = 1,
                   .required = 1,
                   .n_alts = (uint8_t)n_objs,
                   .resolved = 1};
  u.first_prop = (uint16_t)s->n_props;
  s->props[s->n_props++] = (prop){name, name_len, (uint16_t)enum_node};
  u.first_alt = (uint16_t)s->n_alts;
  for (int i = 0; i < n_objs; i++) s->alts[s->n_alts++] = (uint16_t)objs[i];
  if (nullable || (s->nodes[p->node].types & T_NULL)) u.types |= T_NULL;
  s->nodes[p->node] = u;
  return 0;
}

/* The alternatives' types together; at most one object with properties and one array with items
 * among them; enums only with other enums and null. Object schemas told apart by a constant
 * first property make a union (merge_union). */
static int merge_any_of(compiler *c, const pending_any_of *p) {
  const char *where = p->where, *kw = p->keyword;
  int exclusive = kw[0] == 'o'; /* oneOf: exactly one alternative may match */
  int objects = 0;
  for (int i = 0; i < p->n_alts; i++) objects += c->s->nodes[p->alts[i]].has_props;
  if (objects > 1) return merge_union(c, p);
  int enums = 0, nulls = 0;
  for (int i = 0; i < p->n_alts; i++) {
    const schema_node *a = &c->s->nodes[p->alts[i]];
    enums += a->n_enum > 0;
    nulls += !a->n_enum && a->types == T_NULL;
  }
  schema_node merged = {0};
  if (enums) {
    if (enums + nulls != p->n_alts)
      FAIL("'%s' mixes 'enum' with other schemas (only null may join an enum) (at %s)", kw, where);
    json_t *values = json_array();
    for (int i = 0; values && i < p->n_alts; i++) {
      const schema_node *a = &c->s->nodes[p->alts[i]];
      for (int k = 0; k < a->n_enum; k++) {
        const enum_value *v = &c->s->values[a->first_enum + k];
        json_array_append_new(values,
                              json_loadb(c->s->pool + v->text, v->len, JSON_DECODE_ANY, NULL));
      }
      if (!a->n_enum) json_array_append_new(values, json_null());
    }
    if (!values) {
      c->oom = 1;
      FAIL("out of memory");
    }
    for (size_t i = 0; exclusive && values && i < json_array_size(values); i++)
      for (size_t j = 0; j < i; j++)
        if (json_equal(json_array_get(values, i), json_array_get(values, j))) {
          json_decref(values);
          FAIL("'oneOf' alternatives overlap: a value is in two of them (at %s)", where);
        }
    int rc = add_enum(c, &merged, values, where);
    json_decref(values);
    if (rc) return -1;
  } else {
    int strings = 0, numbers = 0; /* alternatives that take them */
    for (int i = 0; i < p->n_alts; i++) {
      const schema_node *a = &c->s->nodes[p->alts[i]];
      strings += (a->types & T_STRING) != 0;
      numbers += (a->types & (T_NUMBER | T_INTEGER)) != 0;
      if (a->types & T_STRING && a->string_rule) merged.string_rule = a->string_rule;
      if (a->types & (T_NUMBER | T_INTEGER) && a->number_rule) merged.number_rule = a->number_rule;
      int numeric = T_NUMBER | T_INTEGER; /* an integer is a number too */
      if (exclusive &&
          ((merged.types & a->types) || ((merged.types & numeric) && (a->types & numeric))))
        FAIL("'oneOf' alternatives overlap: two of them take the same type (at %s)", where);
      if ((merged.types & a->types & T_OBJECT) &&
          (merged.has_props || a->has_props || merged.has_map || a->has_map))
        FAIL("'%s' has two object schemas; one at most (at %s)", kw, where);
      if ((merged.types & a->types & T_ARRAY) && (merged.has_items || a->has_items))
        FAIL("'%s' has two array schemas; one at most (at %s)", kw, where);
      merged.types |= a->types;
      if (a->has_props)
        merged.has_props = 1, merged.first_prop = a->first_prop, merged.n_props = a->n_props,
        merged.required = a->required;
      if (a->has_map) merged.has_map = 1, merged.map_value = a->map_value;
      if (a->has_items)
        merged.has_items = 1, merged.items = a->items, merged.min_items = a->min_items,
        merged.max_items = a->max_items;
    }
    if (strings > 1 && merged.string_rule)
      FAIL("'%s' has a string schema with a pattern, format or length beside another string "
           "schema (at %s)",
           kw, where);
    if (numbers > 1 && merged.number_rule)
      FAIL("'%s' has a number schema with bounds beside another number schema (at %s)", kw, where);
  }
  merged.resolved = 1;
  merged.types |= c->s->nodes[p->node].types & T_NULL; /* nullable */
  c->s->nodes[p->node] = merged;
  return 0;
}

/* Merges every anyOf whose alternatives are all resolved, until none is left. */
static int merge_pending(compiler *c) {
  int left = c->n_pending;
  while (left) {
    int progress = 0;
    for (int i = 0; i < c->n_pending; i++) {
      pending_any_of *p = &c->pending[i];
      if (p->node < 0) continue;
      int ready = 1;
      for (int k = 0; k < p->n_alts && ready; k++) ready = c->s->nodes[p->alts[k]].resolved;
      if (!ready) continue;
      if (merge_any_of(c, p)) return -1;
      p->node = -1;
      left--, progress = 1;
    }
    if (!progress)
      FAIL("'%s' whose alternative is the %s itself (at %s)", c->pending[0].keyword,
           c->pending[0].keyword, c->pending[0].where);
  }
  return 0;
}

/* ---- strings and numbers with constraints ---------------------------------------------------- */

/* The formats a string may have, each a pattern (anchored) and a length its standard sets. The
 * patterns describe the common written form of each (RFC 3339's date-time with an upper-case T
 * and Z and an offset, at most 6 fraction digits; a dot-atom e-mail address of at most 63
 * characters before the '@' on a host name whose last label is letters; host names whose labels
 * have no two hyphens in a row (IDNA reserves "ab--" for punycode) and at most 63 characters; a
 * URI of a scheme, "://",
 * a host name whose last label begins with a letter, then a path, query or fragment), which
 * every validator accepts (Python's jsonschema and rfc3339-validator, pydantic with
 * email-validator, WHATWG URL parsers):
 * generating a subset of the valid strings is safe, generating an invalid one is not. */
#define FMT_YEAR "(?:[1-9]\\d{3}|0[1-9]\\d{2}|00[1-9]\\d|000[1-9])"
#define FMT_DATE                                                                                   \
  "(?:" FMT_YEAR "-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]"    \
  "\\d|30)|02-(?:0[1-9]|1\\d|2[0-8]))|(?:\\d{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468]"  \
  "[048]|[13579][26])00)-02-29)"
#define FMT_TIME                                                                                   \
  "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d{1,6})?(?:Z|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)"
#define FMT_DURATION_TIME                                                                          \
  "T(?:\\d+H(?:\\d+M)?(?:\\d+(?:\\.\\d+)?S)?|\\d+M(?:\\d+(?:\\.\\d+)?S)?|\\d+(?:\\.\\d+)?S)"
#define FMT_LABEL    "[A-Za-z0-9](?:-?[A-Za-z0-9]){0,31}"
#define FMT_ATOM     "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
#define FMT_OCTET    "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)"
#define FMT_HEX4     "[0-9a-fA-F]{1,4}"
#define FMT_URI_CHAR "(?:[A-Za-z0-9._~:/?#\\[\\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})"

static const struct string_format {
  const char *name, *pattern;
  uint32_t max_len;
} formats[] = {
    {"date-time", "^" FMT_DATE "T" FMT_TIME "$", PD_REGEX_NO_MAX},
    {"date", "^" FMT_DATE "$", PD_REGEX_NO_MAX},
    {"time", "^" FMT_TIME "$", PD_REGEX_NO_MAX},
    {"duration",
     "^P(?:(?:\\d+Y(?:\\d+M)?(?:\\d+D)?|\\d+M(?:\\d+D)?|\\d+D)(?:" FMT_DURATION_TIME
     ")?|\\d+W|" FMT_DURATION_TIME ")$",
     PD_REGEX_NO_MAX},
    {"email", "^" FMT_ATOM "(?:\\.?" FMT_ATOM "){0,31}@(?:" FMT_LABEL "\\.)+[A-Za-z]{2,63}$", 254},
    {"hostname", "^" FMT_LABEL "(?:\\." FMT_LABEL ")*$", 253},
    {"ipv4", "^(?:" FMT_OCTET "\\.){3}" FMT_OCTET "$", PD_REGEX_NO_MAX},
    {"ipv6",
     "^(?:(?:" FMT_HEX4 ":){7}" FMT_HEX4 "|(?:" FMT_HEX4 ":){1,7}:|(?:" FMT_HEX4 ":){1,6}:" FMT_HEX4
     "|(?:" FMT_HEX4 ":){1,5}(?::" FMT_HEX4 "){1,2}|(?:" FMT_HEX4 ":){1,4}(?::" FMT_HEX4
     "){1,3}|(?:" FMT_HEX4 ":){1,3}(?::" FMT_HEX4 "){1,4}|(?:" FMT_HEX4 ":){1,2}(?::" FMT_HEX4
     "){1,5}|" FMT_HEX4 ":(?::" FMT_HEX4 "){1,6}|:(?:(?::" FMT_HEX4 "){1,7}|:))$",
     PD_REGEX_NO_MAX},
    {"uuid", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
     PD_REGEX_NO_MAX},
    {"uri",
     "^[A-Za-z][A-Za-z0-9+.-]*://(?:" FMT_LABEL "\\.)*[A-Za-z](?:-?[A-Za-z0-9]){0,31}"
     "(?:[/?#]" FMT_URI_CHAR "*)?$",
     PD_REGEX_NO_MAX},
};

/* A string's pattern, format and length (minLength, maxLength) as one automaton: node idx's
 * string_rule. Nothing to do when the schema has none of them. */
static int add_string_rule(compiler *c, json_t *schema, int idx, const char *where) {
  json_t *pattern = json_object_get(schema, "pattern"), *format = json_object_get(schema, "format");
  uint32_t min_len, max_len;
  if (get_count(c, schema, "minLength", 0, &min_len, where) ||
      get_count(c, schema, "maxLength", PD_REGEX_NO_MAX, &max_len, where))
    return -1;
  if (!pattern && !format && !json_object_get(schema, "minLength") &&
      !json_object_get(schema, "maxLength"))
    return 0;
  if (pattern && format) FAIL("'pattern' beside 'format' is not supported (at %s)", where);
  if (min_len > max_len) FAIL("'minLength' is over 'maxLength' (at %s)", where);
  const char *text = "";
  size_t len = 0;
  if (pattern) {
    if (!json_is_string(pattern)) FAIL("'pattern' must be a string (at %s)", where);
    text = json_string_value(pattern), len = json_string_length(pattern);
  } else if (format) {
    const char *name = json_string_value(format);
    size_t k = 0, n = COUNT(formats);
    while (name && k < n && strcmp(name, formats[k].name)) k++;
    if (k == n)
      FAIL("'format' '%.40s' is not supported (date-time, date, time, duration, email, hostname, "
           "ipv4, ipv6, uuid and uri are) (at %s)",
           name ? name : "(not a string)", where);
    text = formats[k].pattern, len = strlen(text);
    if (formats[k].max_len < max_len) max_len = formats[k].max_len;
  }
  pd_json_schema *s = c->s;
  if (s->n_regexes == PD_SCHEMA_MAX_PATTERNS)
    FAIL("the schema has more than %d strings with a pattern, format or length",
         PD_SCHEMA_MAX_PATTERNS);
  if (grow((void **)&s->regexes, &s->cap_regexes, s->n_regexes + 1, sizeof *s->regexes)) {
    c->oom = 1;
    FAIL("out of memory");
  }
  char why[200];
  int rc =
      pd_regex_compile(text, len, min_len, max_len, &s->regexes[s->n_regexes], why, sizeof why);
  if (rc == PD_ENOMEM) c->oom = 1;
  if (rc)
    FAIL("'%s': %s (at %s)", pattern ? "pattern" : format ? "format" : "maxLength", why, where);
  s->nodes[idx].string_rule = (uint16_t)++s->n_regexes;
  return 0;
}

/* A bound as decimal text for pd_num_bounds_set: the shortest that reads back as the same double
 * (so 0.1 is "0.1", not its binary value), or an integer's digits. NULL if v is not a number. */
static const char *bound_text(json_t *v, char *buf, size_t len) {
  if (json_is_integer(v)) {
    snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    return buf;
  }
  if (!json_is_real(v)) return NULL;
  double x = json_real_value(v);
  for (int digits = 1; digits <= 17; digits++) {
    snprintf(buf, len, "%.*e", digits - 1, x);
    if (strtod(buf, NULL) == x) break;
  }
  return buf;
}

/* minimum, maximum, exclusiveMinimum, exclusiveMaximum: node idx's number_rule (integer: only
 * whole numbers). A boolean exclusiveMinimum/exclusiveMaximum makes minimum/maximum exclusive
 * (draft 4's form); a number is a bound of its own (draft 6 on), the tighter one counting. */
static int add_number_rule(compiler *c, json_t *schema, int idx, int integer, const char *where) {
  static const char *const names[4] = {"minimum", "exclusiveMinimum", "maximum",
                                       "exclusiveMaximum"};
  json_t *v[4];
  int any = 0;
  for (int i = 0; i < 4; i++) any |= (v[i] = json_object_get(schema, names[i])) != NULL;
  if (!any) return 0;
  pd_num_bounds bounds, tighter;
  char err[160];
  pd_num_bounds_set(&bounds, NULL, 0, NULL, 0, integer, NULL, 0); /* every number */
  for (int upper = 0; upper < 2; upper++) {
    json_t *inclusive = v[2 * upper], *exclusive = v[2 * upper + 1];
    int flag = json_is_boolean(exclusive) && json_is_true(exclusive);
    if (json_is_boolean(exclusive)) exclusive = NULL;
    for (int e = 0; e < 2; e++) { /* the inclusive bound, then the exclusive one */
      json_t *b = e ? exclusive : inclusive;
      char text[48];
      if (!b) continue;
      if (!bound_text(b, text, sizeof text))
        FAIL("'%s' must be a number (at %s)", names[2 * upper + e], where);
      int rc = pd_num_bounds_set(&tighter, upper ? NULL : text, e || flag, upper ? text : NULL,
                                 e || flag, integer, err, sizeof err);
      if (rc) FAIL("'%s': %s (at %s)", names[2 * upper + e], err, where);
      if (tighter.lo > bounds.lo) bounds.lo = tighter.lo;
      if (tighter.hi < bounds.hi) bounds.hi = tighter.hi;
    }
  }
  if (bounds.lo > bounds.hi)
    FAIL("no %s satisfies both 'minimum' and 'maximum' (at %s)", integer ? "integer" : "number",
         where);
  pd_json_schema *s = c->s;
  if (grow((void **)&s->bounds, &s->cap_bounds, s->n_bounds + 1, sizeof *s->bounds)) {
    c->oom = 1;
    FAIL("out of memory");
  }
  s->bounds[s->n_bounds] = bounds;
  s->nodes[idx].number_rule = (uint16_t)++s->n_bounds;
  return 0;
}

/* A schema's node: a new one, or the one "$ref" names. */
static int compile(compiler *c, json_t *schema, const char *where) {
  if (json_is_object(schema) && json_object_get(schema, "$ref"))
    return resolve_ref(c, json_object_get(schema, "$ref"), where);
  int idx = new_node(c);
  if (idx < 0) return -1;
  return compile_into(c, schema, idx, where) ? -1 : idx;
}

/* Compiles schema into node idx (an anyOf is left unresolved until merge_pending). */
static int compile_into(compiler *c, json_t *schema, int idx, const char *where) {
  if (json_is_true(schema)) {
    c->s->nodes[idx].types = T_ALL, c->s->nodes[idx].resolved = 1;
    return 0;
  }
  if (!json_is_object(schema)) FAIL("a schema must be an object or true (at %s)", where);
  if (json_object_get(schema, "$ref"))
    FAIL("'$ref' is supported below the root of the schema, not at it (at %s)", where);
  const char *key;
  json_t *v;
  json_object_foreach(schema, key, v) {
    if (!in_list(key, supported, COUNT(supported)) &&
        !in_list(key, leaf_keywords, COUNT(leaf_keywords)) &&
        !in_list(key, annotations, COUNT(annotations)))
      FAIL("'%.40s' is not supported in a schema (at %s)", key, where);
  }
  json_t *any_of = json_object_get(schema, "anyOf"), *one_of = json_object_get(schema, "oneOf");
  if (any_of && one_of) FAIL("'anyOf' beside 'oneOf' is not supported (at %s)", where);
  if (any_of || one_of) {
    const char *kw = any_of ? "anyOf" : "oneOf";
    const char *alone[] = {"type", "properties", "items", "enum", "const", "required"};
    for (size_t k = 0; k < COUNT(alone) + COUNT(leaf_keywords); k++) {
      const char *name = k < COUNT(alone) ? alone[k] : leaf_keywords[k - COUNT(alone)];
      if (json_object_get(schema, name))
        FAIL("'%s' beside '%s' is not supported: put it in the alternatives (at %s)", kw, name,
             where);
    }
    if (record_any_of(c, idx, kw, any_of ? any_of : one_of, where)) return -1;
    if (json_is_true(json_object_get(schema, "nullable"))) c->s->nodes[idx].types |= T_NULL;
    return 0; /* resolved when merged */
  } else if (json_object_get(schema, "enum") || json_object_get(schema, "const")) {
    for (size_t k = 0; k < COUNT(leaf_keywords); k++)
      if (json_object_get(schema, leaf_keywords[k]))
        FAIL("'%s' beside '%s' is not supported (at %s)", leaf_keywords[k],
             json_object_get(schema, "enum") ? "enum" : "const", where);
    json_t *values = json_object_get(schema, "enum");
    json_t *one = NULL;
    if (!values) values = one = json_pack("[O]", json_object_get(schema, "const"));
    schema_node n = {0};
    int rc = values ? add_enum(c, &n, values, where) : (c->oom = 1, -1);
    json_decref(one);
    if (rc) return -1;
    c->s->nodes[idx] = n;
  } else {
    json_t *type = json_object_get(schema, "type"), *props = json_object_get(schema, "properties"),
           *items = json_object_get(schema, "items");
    int types = type ? type_bits(c, type, where) : props ? T_OBJECT : items ? T_ARRAY : T_ALL;
    if (types < 0) return -1;
    if (json_object_get(schema, "required") && !props)
      FAIL("'required' without 'properties' is not supported (at %s)", where);
    if (props && add_properties(c, idx, props, json_object_get(schema, "required"), where))
      return -1;
    /* beside "properties", additionalProperties needs no enforcing: no other property is ever
     * generated; without them, false allows only {} and a schema makes a map */
    json_t *more = json_object_get(schema, "additionalProperties");
    if (!props && json_is_false(more)) {
      c->s->nodes[idx].has_props = 1; /* and none of them */
    } else if (!props && json_is_object(more)) {
      char path[160];
      snprintf(path, sizeof path, "%.100s/additionalProperties", where);
      int value = compile(c, more, path);
      if (value < 0) return -1;
      c->s->nodes[idx].has_map = 1, c->s->nodes[idx].map_value = (uint16_t)value;
    } else if (more && !json_is_boolean(more) && !json_is_object(more)) {
      FAIL("'additionalProperties' must be a boolean or a schema (at %s)", where);
    }
    uint32_t min_items, max_items;
    if (get_count(c, schema, "minItems", 0, &min_items, where) ||
        get_count(c, schema, "maxItems", 65535, &max_items, where))
      return -1;
    if ((json_object_get(schema, "minItems") || json_object_get(schema, "maxItems")) && !items)
      FAIL("'minItems'/'maxItems' without 'items' are not supported (at %s)", where);
    if (min_items > max_items) FAIL("'minItems' is over 'maxItems' (at %s)", where);
    int item_node = -1;
    if (items) {
      char path[160];
      snprintf(path, sizeof path, "%.100s/items", where);
      if (!json_is_object(items) && !json_is_true(items))
        FAIL("'items' must be one schema (tuples are not supported) (at %s)", where);
      if ((item_node = compile(c, items, path)) < 0) return -1;
    }
    int integer = (types & T_INTEGER) && !(types & T_NUMBER);
    if (add_string_rule(c, schema, idx, where) || add_number_rule(c, schema, idx, integer, where))
      return -1;
    schema_node *n = &c->s->nodes[idx];
    n->types = (uint8_t)types;
    if (item_node >= 0)
      n->has_items = 1, n->items = (uint16_t)item_node, n->min_items = min_items,
      n->max_items = max_items;
  }
  schema_node *n = &c->s->nodes[idx];
  if (json_is_true(json_object_get(schema, "nullable"))) {
    if (n->n_enum) FAIL("'nullable' beside 'enum' is not supported: add null to it (at %s)", where);
    n->types |= T_NULL;
  }
  if (n->has_props || n->has_map) n->types |= T_OBJECT;
  n->resolved = 1;
  return 0;
}

int pd_json_schema_compile(const char *text, size_t len, pd_json_schema **out, char *err,
                           size_t errlen) {
  *out = NULL;
  json_error_t jerr;
  json_t *root = json_loadb(text, len, 0, &jerr);
  if (!root) {
    snprintf(err, errlen, "the schema is not valid JSON (line %d, column %d): %s", jerr.line,
             jerr.column, jerr.text);
    return PD_EINVAL;
  }
  compiler c = {.root = root, .err = err, .errlen = errlen};
  c.s = calloc(1, sizeof *c.s);
  c.defs_names = json_object();
  int rc = PD_ENOMEM;
  if (c.s && c.defs_names) {
    int idx = new_node(&c); /* the root is node 0, so that "#" can name it */
    int failed = idx != 0 || compile_into(&c, root, 0, "#") || merge_pending(&c);
    rc = failed ? (c.oom ? PD_ENOMEM : PD_EINVAL) : PD_OK;
  }
  json_decref(c.defs_names);
  json_decref(root);
  free(c.pending);
  if (rc) {
    if (rc == PD_ENOMEM) snprintf(err, errlen, "out of memory");
    pd_json_schema_free(c.s);
    return rc;
  }
  *out = c.s;
  return PD_OK;
}

#undef FAIL

/* ---- reading --------------------------------------------------------------------------------- */

enum mode {
  S_VALUE,     /* a value: st->node's */
  S_LEAF,      /* inside a string, number, literal or free value (st->leaf) */
  S_STRING,    /* inside a string with a pattern, format or length (st->string) */
  S_NUMBER,    /* inside a number with bounds (st->number) */
  S_ENUM,      /* inside an enum value */
  S_OBJ_OPEN,  /* after '{': a key or '}' */
  S_OBJ_NEXT,  /* after ',' in an object: a key */
  S_KEY,       /* inside a key */
  S_MAP_KEY,   /* inside a map's key: any string (st->leaf) */
  S_COLON,     /* after a key */
  S_OBJ_AFTER, /* after a property's value: ',' or '}' */
  S_ARR_OPEN,  /* after '[': an item or ']' */
  S_ARR_AFTER, /* after an item: ',' or ']' */
  S_DONE
};

void pd_schema_init(pd_schema_state *st, const pd_json_schema *schema) {
  memset(st, 0, sizeof *st);
  st->schema = schema;
  st->mode = S_VALUE;
}

static const schema_node *node_at(const pd_schema_state *st, uint16_t i) {
  return &st->schema->nodes[i];
}

static pd_schema_frame *top(pd_schema_state *st) {
  return &st->frames[st->depth - 1];
}

/* The node of the value that comes next. */
static uint16_t value_node(pd_schema_state *st) {
  if (!st->depth) return 0;
  const pd_schema_frame *f = top(st);
  const schema_node *n = node_at(st, f->node);
  if (f->object == 2) return n->map_value;
  return f->object ? st->schema->props[n->first_prop + f->prop].node : n->items;
}

static void value_end(pd_schema_state *st) {
  if (!st->depth) {
    st->mode = S_DONE;
    return;
  }
  pd_schema_frame *f = top(st);
  const schema_node *n = node_at(st, f->node);
  if (f->object && n->n_alts && f->prop == 0) { /* a union's constant: its alternative goes on */
    const schema_node *e = node_at(st, st->node);
    for (int j = 0; j < e->n_enum; j++)
      if (((st->cand >> j) & 1) && st->schema->values[e->first_enum + j].len == st->pos) {
        f->node = st->schema->alts[n->first_alt + j];
        break;
      }
  }
  if (f->object)
    f->prop += f->object == 1, st->mode = S_OBJ_AFTER; /* a map's keys are not counted */
  else
    f->items++, st->mode = S_ARR_AFTER;
}

static int push(pd_schema_state *st, uint16_t node, int object) {
  if (st->depth == PD_SCHEMA_MAX_DEPTH) return 0;
  st->frames[st->depth++] = (pd_schema_frame){node, 0, 0, (uint8_t)object};
  st->mode = object ? S_OBJ_OPEN : S_ARR_OPEN;
  return 1;
}

static void pop(pd_schema_state *st) {
  st->depth--;
  value_end(st);
}

/* Required properties at or after index i. */
static uint64_t required_from(const schema_node *n, unsigned i) {
  return i >= 64 ? 0 : n->required >> i;
}

/* A byte of a leaf: 1 taken, 0 refused, -1 the leaf (a number) ended before it. */
static int leaf_byte(pd_schema_state *st, uint8_t b) {
  if (st->integer && (b == '.' || b == 'e' || b == 'E')) return 0;
  pd_json_state next = st->leaf;
  if (pd_json_step(&next, b)) {
    st->leaf = next;
    if (pd_json_done(&st->leaf)) value_end(st);
    return 1;
  }
  if (!pd_json_complete(&st->leaf)) return 0;
  value_end(st);
  return -1;
}

/* A byte of an enum value: 1 taken, 0 refused, -1 the value (a number) ended before it. */
static int enum_byte(pd_schema_state *st, uint8_t b) {
  const schema_node *n = node_at(st, st->node);
  const enum_value *values = st->schema->values + n->first_enum;
  const char *pool = st->schema->pool;
  uint64_t next = 0, complete = 0;
  for (int j = 0; j < n->n_enum; j++)
    if ((st->cand >> j) & 1) {
      if (st->pos < values[j].len && (uint8_t)pool[values[j].text + st->pos] == b)
        next |= 1ull << j;
      if (st->pos == values[j].len) complete = 1;
    }
  if (!next) {
    if (!complete) return 0;
    value_end(st);
    return -1;
  }
  st->cand = next;
  st->pos++;
  int longer = 0;
  complete = 0;
  for (int j = 0; j < n->n_enum; j++)
    if ((next >> j) & 1) {
      if (values[j].len == st->pos)
        complete = 1;
      else
        longer = 1;
    }
  if (complete && !longer) value_end(st);
  return 1;
}

static int key_byte(pd_schema_state *st, uint8_t b) {
  pd_schema_frame *f = top(st);
  const schema_node *n = node_at(st, f->node);
  const prop *props = st->schema->props + n->first_prop;
  const char *pool = st->schema->pool;
  if (b == '"') {
    for (int j = 0; j < n->n_props; j++)
      if (((st->cand >> j) & 1) && props[j].len == st->pos) {
        f->prop = (uint8_t)j;
        st->mode = S_COLON;
        return 1;
      }
    return 0;
  }
  uint64_t next = 0;
  for (int j = 0; j < n->n_props; j++)
    if (((st->cand >> j) & 1) && st->pos < props[j].len &&
        (uint8_t)pool[props[j].name + st->pos] == b)
      next |= 1ull << j;
  if (!next) return 0;
  st->cand = next;
  st->pos++;
  return 1;
}

/* ---- constrained strings and bounded numbers ---------------------------------------------------- */

static const pd_regex *string_regex(const pd_schema_state *st) {
  return st->schema->regexes[node_at(st, st->node)->string_rule - 1];
}

/* Some code point in [lo, hi], less the surrogates, may come next. */
static int string_may_be(const pd_schema_state *st, uint32_t lo, uint32_t hi) {
  const pd_regex *re = string_regex(st);
  const pd_schema_string *s = &st->string;
  if (hi > 0x10FFFF) hi = 0x10FFFF;
  if (lo < 0xD800 && pd_regex_any(re, s->regex, s->count, lo, hi < 0xD800 ? hi : 0xD7FF)) return 1;
  return hi > 0xDFFF && pd_regex_any(re, s->regex, s->count, lo > 0xE000 ? lo : 0xE000, hi);
}

/* The character cp comes: 1 if the pattern and the length allow it (st advanced). */
static int string_char(pd_schema_state *st, uint32_t cp) {
  pd_schema_string *s = &st->string;
  int32_t next = pd_regex_next(string_regex(st), s->regex, s->count, cp);
  if (next < 0) return 0;
  s->regex = (uint32_t)next;
  if (s->count < UINT32_MAX) s->count++;
  return 1;
}

/* A half-written UTF-8 character may still become an allowed one. */
static int utf8_may_be(const pd_schema_state *st) {
  static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000},
                        most[5] = {0, 0, 0x7FF, 0xFFFF, 0x10FFFF};
  const pd_schema_string *s = &st->string;
  uint32_t span = 1u << (6 * s->need), lo = s->cp * span, hi = lo + span - 1;
  if (lo < least[s->utf8]) lo = least[s->utf8]; /* an overlong form is empty here */
  if (hi > most[s->utf8]) hi = most[s->utf8];
  return lo <= hi && string_may_be(st, lo, hi);
}

static int hex_value(uint8_t b) {
  if (b >= '0' && b <= '9') return b - '0';
  if ((b | 0x20) >= 'a' && (b | 0x20) <= 'f') return (b | 0x20) - 'a' + 10;
  return -1;
}

/* A byte of a constrained string, after its opening quote: 1 taken, 0 refused. */
static int string_byte(pd_schema_state *st, uint8_t b) {
  pd_schema_string *s = &st->string;
  if (s->escape == 1) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (b == 'u') {
      s->escape = 2, s->need = 4, s->cp = 0;
      return string_may_be(st, 0, 0xFFFF);
    }
    const char *at = b ? strchr(from, b) : NULL;
    if (!at) return 0;
    s->escape = 0;
    return string_char(st, (uint8_t)to[at - from]);
  }
  if (s->escape == 2) {
    int v = hex_value(b);
    if (v < 0) return 0;
    s->cp = s->cp * 16 + (uint32_t)v;
    if (--s->need) {
      uint32_t span = 1u << (4 * s->need);
      return string_may_be(st, s->cp * span, s->cp * span + span - 1);
    }
    s->escape = 0;
    return (s->cp < 0xD800 || s->cp > 0xDFFF) && string_char(st, s->cp);
  }
  if (s->need) {
    if ((b & 0xC0) != 0x80) return 0;
    s->cp = s->cp << 6 | (b & 0x3F);
    if (--s->need) return utf8_may_be(st);
    return string_char(st, s->cp);
  }
  if (b == '"') {
    if (!pd_regex_accepting(string_regex(st), s->regex, s->count)) return 0;
    value_end(st);
    return 1;
  }
  if (b == '\\') {
    s->escape = 1;
    return string_may_be(st, 0, 0xFFFF); /* any of these may be written as \u */
  }
  if (b < 0x20) return 0;
  if (b < 0x80) return string_char(st, b);
  if (b >= 0xC2 && b <= 0xDF)
    s->utf8 = 2;
  else if (b >= 0xE0 && b <= 0xEF)
    s->utf8 = 3;
  else if (b >= 0xF0 && b <= 0xF4)
    s->utf8 = 4;
  else
    return 0;
  s->need = s->utf8 - 1;
  s->cp = b & (0x7Fu >> s->utf8);
  return utf8_may_be(st);
}

/* A byte of a bounded number: 1 taken, 0 refused, -1 the number ended before it. */
static int number_byte(pd_schema_state *st, uint8_t b) {
  const pd_num_bounds *bounds = &st->schema->bounds[node_at(st, st->node)->number_rule - 1];
  if (pd_num_step(bounds, &st->number, b)) return 1;
  if (!pd_num_complete(bounds, &st->number)) return 0;
  value_end(st);
  return -1;
}

/* A byte of a map's key, a string read by the JSON grammar: after its closing quote, a ':'. */
static int map_key_byte(pd_schema_state *st, uint8_t b) {
  pd_json_state next = st->leaf;
  if (!pd_json_step(&next, b)) return 0;
  st->leaf = next;
  if (pd_json_done(&st->leaf)) st->mode = S_COLON;
  return 1;
}

/* The first byte of a value of st->node (not whitespace). */
static int value_start(pd_schema_state *st, uint8_t b) {
  const schema_node *n = node_at(st, st->node);
  if (n->n_enum) {
    st->mode = S_ENUM;
    st->cand = n->n_enum == 64 ? ~0ull : (1ull << n->n_enum) - 1;
    st->pos = 0;
    return enum_byte(st, b) == 1;
  }
  int need;
  switch (b) {
  case '{':
    if (!(n->types & T_OBJECT)) return 0;
    if (n->has_props) return push(st, st->node, 1);
    if (n->has_map) return push(st, st->node, 2);
    need = T_OBJECT;
    break;
  case '[':
    if (!(n->types & T_ARRAY)) return 0;
    if (n->has_items) return push(st, st->node, 0);
    need = T_ARRAY;
    break;
  case '"': need = T_STRING; break;
  case 't':
  case 'f': need = T_BOOLEAN; break;
  case 'n': need = T_NULL; break;
  default:
    if (b != '-' && (b < '0' || b > '9')) return 0;
    need = T_NUMBER | T_INTEGER;
    break;
  }
  if (!(n->types & need)) return 0;
  if (need == T_STRING && n->string_rule) {
    st->mode = S_STRING;
    memset(&st->string, 0, sizeof st->string);
    st->string.regex = pd_regex_start(st->schema->regexes[n->string_rule - 1]);
    return 1;
  }
  if (need == (T_NUMBER | T_INTEGER) && n->number_rule) {
    st->mode = S_NUMBER;
    pd_num_init(&st->number);
    return number_byte(st, b) == 1;
  }
  st->integer = need == (T_NUMBER | T_INTEGER) && !(n->types & T_NUMBER);
  st->mode = S_LEAF;
  pd_json_init(&st->leaf, 0);
  return leaf_byte(st, b) == 1;
}

/* A byte where whitespace may come: after it, what the mode allows. */
static int structural(pd_schema_state *st, uint8_t b) {
  if (b == ' ' || b == '\t' || b == '\n' || b == '\r')
    return pd_json_ws_step(&st->ws_run, &st->ws_breaks, b);
  st->ws_run = st->ws_breaks = 0;
  pd_schema_frame *f = st->depth ? top(st) : NULL;
  const schema_node *n = f ? node_at(st, f->node) : NULL;
  switch (st->mode) {
  case S_VALUE: st->node = value_node(st); return value_start(st, b);
  case S_OBJ_OPEN:
  case S_OBJ_NEXT:
    if (b == '}' && st->mode == S_OBJ_OPEN && !n->required) return pop(st), 1;
    if (b != '"') return 0;
    if (f->object == 2) { /* a map: any key */
      pd_json_init(&st->leaf, 0);
      st->mode = S_MAP_KEY;
      return pd_json_step(&st->leaf, b);
    }
    st->cand = 0;
    for (unsigned j = f->prop; j < n->n_props; j++) { /* up to the next required one */
      st->cand |= 1ull << j;
      if ((n->required >> j) & 1) break;
    }
    if (!st->cand) return 0;
    st->pos = 0;
    st->mode = S_KEY;
    return 1;
  case S_COLON:
    if (b != ':') return 0;
    st->mode = S_VALUE;
    return 1;
  case S_OBJ_AFTER:
    if (b == ',' && (f->object == 2 || f->prop < n->n_props)) return st->mode = S_OBJ_NEXT, 1;
    if (b == '}' && !required_from(n, f->prop)) return pop(st), 1;
    return 0;
  case S_ARR_OPEN:
    if (b == ']' && n->min_items == 0) return pop(st), 1;
    if (n->max_items == 0) return 0;
    st->node = n->items;
    return value_start(st, b);
  case S_ARR_AFTER:
    if (b == ',' && f->items < n->max_items) return st->mode = S_VALUE, 1;
    if (b == ']' && f->items >= n->min_items) return pop(st), 1;
    return 0;
  default: return 0;
  }
}

int pd_schema_step(void *state, uint8_t b) {
  pd_schema_state *st = state;
  for (;;) {
    int r;
    switch (st->mode) {
    case S_LEAF: r = leaf_byte(st, b); break;
    case S_STRING: return string_byte(st, b);
    case S_NUMBER: r = number_byte(st, b); break;
    case S_ENUM: r = enum_byte(st, b); break;
    case S_KEY: return key_byte(st, b);
    case S_MAP_KEY: return map_key_byte(st, b);
    case S_DONE: return 0;
    default: return structural(st, b);
    }
    if (r >= 0) return r;
    /* the number ended: b is what follows it */
  }
}

int pd_schema_done(const pd_schema_state *st) {
  return st->mode == S_DONE;
}

int pd_schema_complete(const pd_schema_state *st) {
  if (st->mode == S_DONE) return 1;
  if (st->depth) return 0;
  if (st->mode == S_LEAF) return pd_json_complete(&st->leaf);
  if (st->mode == S_NUMBER)
    return pd_num_complete(&st->schema->bounds[node_at(st, st->node)->number_rule - 1],
                           &st->number);
  if (st->mode != S_ENUM) return 0;
  const schema_node *n = node_at(st, st->node);
  for (int j = 0; j < n->n_enum; j++)
    if (((st->cand >> j) & 1) && st->schema->values[n->first_enum + j].len == st->pos) return 1;
  return 0;
}

int pd_schema_plain_string(const pd_schema_state *st) {
  return st->mode == S_LEAF && pd_json_plain_string(&st->leaf);
}
