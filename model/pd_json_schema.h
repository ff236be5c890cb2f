/*
 * pd_json_schema.h -- JSON Schema for constrained decoding: a schema compiled into a node table,
 * and a byte-at-a-time recognizer of the JSON texts it describes (structured outputs).
 *
 * What is enforced: "type" (a name or a list), "properties" with "required" (the properties come
 * in the order the schema lists them; optional ones may be left out; no other property is ever
 * generated, so "additionalProperties" needs no enforcing), "items" with "minItems"/"maxItems",
 * "enum" and "const" (the value is one of them byte for byte, as compact JSON), "anyOf" of
 * alternatives that differ in type (at most one object with properties and one array with items
 * among them; enums with null) or of objects told apart by a required property holding a
 * distinct string constant under the same name (a tagged union, null allowed beside: the
 * constant, generated first wherever the alternative lists it, picks the alternative whose other
 * properties follow), "oneOf" as "anyOf" where its alternatives cannot overlap ("discriminator"
 * is an annotation: the tag is found by the rule above), "nullable", and
 * "$ref" to "#", "#/$defs/NAME" or
 * "#/definitions/NAME" (recursion allowed). An object without "properties" takes
 * "additionalProperties": false (only {}) or a schema (a map: any string keys, each value valid
 * for it: pydantic's Dict[str, X]). For strings: "pattern" (an ECMA-262 regular
 * expression, pd_regex), "format" (date-time, date, time, duration, email, hostname, ipv4, ipv6,
 * uuid and uri, each as a pattern of its own), "minLength" and "maxLength" (code points); for
 * numbers and integers: "minimum", "maximum", "exclusiveMinimum" and "exclusiveMaximum"
 * (pd_json_bounds: such a number is written without an exponent, with at most 15 fraction
 * digits). A schema without constraints ({} or true), an object
 * without "properties" and an array without "items" take any JSON of that type. Annotations are
 * ignored (title, description, default, examples, $schema, $id, $comment, deprecated, readOnly,
 * writeOnly, additionalProperties, $defs, definitions, discriminator). Every other keyword
 * ("multipleOf", "uniqueItems", "allOf", ...) is refused by name at compile time: what cannot be enforced is
 * not silently ignored.
 *
 * Strings, numbers and the literals are read by pd_json_grammar (embedded in the state), so they
 * follow the same rules as JSON output; an "integer" refuses '.', 'e' and 'E'. A string with a
 * pattern, format or length is read by this file's own string reader, which decodes each
 * character (raw UTF-8, or an escape: \" \\ \/ \b \f \n \r \t and \u of a code point of
 * the BMP other than a surrogate) and steps the pattern's automaton with it; a bounded number by
 * pd_json_bounds. The recognizer has
 * the grammar's property: it never accepts a byte after which no text valid for the schema could
 * follow, except where the schema's own nesting exceeds PD_SCHEMA_MAX_DEPTH (then no byte may
 * come, and the generation ends with an error).
 */
#ifndef PD_JSON_SCHEMA_H
#define PD_JSON_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#include "pd_json_bounds.h"
#include "pd_json_grammar.h"

#define PD_SCHEMA_MAX_DEPTH    12        /* nested objects and arrays described by the schema */
#define PD_SCHEMA_MAX_NODES    1024      /* schemas in one compiled schema */
#define PD_SCHEMA_MAX_PROPS    64        /* properties of one object */
#define PD_SCHEMA_MAX_ENUM     64        /* values of one enum */
#define PD_SCHEMA_MAX_POOL     (1 << 20) /* bytes of property names and enum values, all told */
#define PD_SCHEMA_MAX_PATTERNS 64        /* strings with a pattern, format or length */

typedef struct pd_json_schema pd_json_schema;

/* Compiles a schema (text: n bytes of JSON). *out is owned by the caller (pd_json_schema_free).
 * PD_EINVAL with the reason in err (naming the keyword and where it is) for what is not JSON,
 * not a schema, or not supported; PD_ENOMEM. */
int pd_json_schema_compile(const char *text, size_t n, pd_json_schema **out, char *err,
                           size_t errlen);
void pd_json_schema_free(pd_json_schema *s);

typedef struct pd_schema_frame {
  uint16_t node;  /* the object or array being read */
  uint16_t items; /* array: items so far */
  uint8_t prop;   /* object: the property being read, then the first that may come next */
  uint8_t object; /* 1: an object with properties, 2: a map, 0: an array */
} pd_schema_frame;

/* A string with a pattern, format or length, being read. */
typedef struct pd_schema_string {
  uint32_t count; /* code points so far */
  uint32_t cp;    /* the character being read: its bits so far (UTF-8) or hex value (\u) */
  uint32_t regex; /* the pattern automaton's state */
  uint8_t need;   /* UTF-8 continuation bytes, or \u hex digits, still to come */
  uint8_t utf8;   /* the UTF-8 sequence's length */
  uint8_t escape; /* 0: none, 1: after a backslash, 2: in a \u escape */
} pd_schema_string;

typedef struct pd_schema_state {
  const pd_json_schema *schema; /* borrowed */
  uint64_t cand;                /* key or enum: the candidates still matching */
  union {                       /* the leaf being read (mode S_LEAF, S_STRING, S_NUMBER) */
    pd_json_state leaf;         /* a string, number, literal or free value */
    pd_schema_string string;    /* a constrained string */
    pd_num_state number;        /* a bounded number */
  };
  pd_schema_frame frames[PD_SCHEMA_MAX_DEPTH];
  uint16_t pos;      /* key or enum: bytes matched */
  uint16_t node;     /* the value being read (leaf or enum) */
  uint8_t depth;     /* frames in use */
  uint8_t mode;      /* what may come next (pd_json_schema.c's enum) */
  uint8_t ws_run;    /* whitespace bytes in a row */
  uint8_t ws_breaks; /* line breaks among them (pd_json_ws_step) */
  uint8_t integer;   /* the leaf is a number that must be an integer */
} pd_schema_state;

/* A fresh state for schema (which must outlive it): nothing read yet. */
void pd_schema_init(pd_schema_state *st, const pd_json_schema *schema);

/* One byte: 1 if the text stays a prefix of a JSON text valid for the schema (st advanced), 0 if
 * not (st may have changed). The signature is pd_token_trie's step. */
int pd_schema_step(void *state, uint8_t byte);

/* The top-level value is closed: nothing may follow. */
int pd_schema_done(const pd_schema_state *st);

/* What was read is a whole valid text (done, or a top-level number or enum value that may end
 * here). */
int pd_schema_complete(const pd_schema_state *st);

/* Inside a string value (not a key or an enum value) where plain text is accepted and changes
 * nothing (pd_json_plain_string). */
int pd_schema_plain_string(const pd_schema_state *st);

#endif /* PD_JSON_SCHEMA_H */
