/*
 * fuzz_json_schema.c -- libFuzzer target: structured output's schema compiler and both JSON
 * readers (model/pd_json_schema, model/pd_json_grammar), on untrusted schemas and documents.
 *
 * DESIGN
 *
 * The input is a schema and a document separated by the first NUL byte (no NUL: the whole input
 * is both). The schema is compiled (a refusal must say why); the document's bytes are stepped
 * through the schema's reader and through the plain JSON grammar, each until its first refusal.
 * Checked per input:
 *   - a prefix a reader calls whole (pd_schema_complete / pd_json_complete) is JSON that jansson
 *     parses (excepted: a number beyond a double, which jansson refuses as an overflow, and an
 *     object key holding \u0000, valid JSON that jansson cannot hold in a C-string key), and an
 *     object when the plain grammar reads in object-only mode;
 *   - a reader that says done refuses every further byte;
 *   - nothing leaks and nothing reads out of bounds, whatever the schema (recursion, $ref cycles,
 *     anyOf over references, huge enums).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_json_grammar.h"
#include "pd_json_schema.h"

static void check_whole(const uint8_t *text, size_t n, int want_object) {
  json_error_t err;
  json_t *v = json_loadb((const char *)text, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  if (!v) {
    if (strstr(err.text, "overflow") || strstr(err.text, "too big") ||
        strstr(err.text, "NUL byte in object key"))
      return; /* valid JSON jansson cannot represent */
    abort();  /* the reader called invalid JSON whole */
  }
  if (want_object && !json_is_object(v)) abort();
  json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, 0, size);
  size_t n_schema = nul ? (size_t)(nul - data) : size;
  const uint8_t *doc = nul ? nul + 1 : data;
  size_t n_doc = nul ? size - n_schema - 1 : size;

  pd_json_state plain;
  pd_json_init(&plain, 1);
  size_t i = 0;
  while (i < n_doc && pd_json_step(&plain, doc[i])) i++;
  if (pd_json_complete(&plain)) check_whole(doc, i, 1);
  if (pd_json_done(&plain) && pd_json_step(&plain, ' ')) abort();

  pd_json_schema *schema;
  char err[256] = "";
  int rc = pd_json_schema_compile((const char *)data, n_schema, &schema, err, sizeof err);
  if (rc == PD_EINVAL && !err[0]) abort(); /* a refusal without a reason */
  if (rc) return 0;
  pd_schema_state st;
  pd_schema_init(&st, schema);
  i = 0;
  while (i < n_doc && pd_schema_step(&st, doc[i])) i++;
  if (pd_schema_complete(&st)) check_whole(doc, i, 0);
  if (pd_schema_done(&st))
    for (int b = 0; b < 256; b++) {
      pd_schema_state t = st;
      if (pd_schema_step(&t, (uint8_t)b)) abort();
    }
  pd_json_schema_free(schema);
  return 0;
}
