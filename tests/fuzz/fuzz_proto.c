/*
 * fuzz_proto.c -- libFuzzer target: protobuf-c decoding of every message the daemon unpacks
 * from the wire (proto/prefixd/v1/prefixd.proto, services prefixd.v1.Prefixd and
 * prefixd.v1.Admin).
 *
 * DESIGN
 *
 * The methods are found by walking the generated service descriptors, so a method added to the
 * proto is fuzzed without touching this file. Input: byte 0 picks a message, the rest is its
 * packed bytes. With N methods in all, byte 0 modulo 2N selects method k = (byte 0 mod 2N) mod N
 * and, below N, its request (what pd_grpc_server unpacks for the routed method) or, from N on,
 * its response (what the C client library unpacks from the daemon).
 *
 * Per input: protobuf_c_message_unpack with the default allocator; on success:
 *   - protobuf_c_message_check holds (every string and sub-message pointer is valid);
 *   - pack -> bytes1 (packed size agrees with the bytes written), unpack bytes1 -> msg2,
 *     pack msg2 -> bytes2, and bytes1 == bytes2: the decoder and the encoder agree, so a
 *     message that decoded re-encodes to a fixed point (the input itself may differ from bytes1:
 *     non-minimal varints, repeated scalars, field order, a oneof given twice);
 *   - free_unpacked on both (LeakSanitizer checks that nothing stays behind).
 *
 * protobuf-c is Debian's library, not built with coverage, so libFuzzer cannot see inside the
 * decoder. It is guided instead by the shape of what decoded: each message that unpacks is
 * walked (descriptors give every field's offset), and each (message type, field, present or
 * not, how many elements, depth) seen sets a byte in an extra-counters section that libFuzzer
 * treats as coverage. Inputs that fill in new fields, oneof cases or nestings are kept.
 *
 * Known upstream quirk, tolerated: protobuf-c 1.4 rejects a one-byte tag with field number 0 but
 * accepts one written in a longer varint (0x80 0x00), keeps it as an unknown field and re-packs
 * it in one byte, which it then rejects. The daemon never re-packs a request, so for a message
 * holding such an unknown field the fixed-point check is skipped.
 */
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/v1/prefixd.pb-c.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_proto: check failed: %s (line %d)\n", #cond, __LINE__);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static const ProtobufCServiceDescriptor *const services[] = {&prefixd__v1__prefixd__descriptor,
                                                             &prefixd__v1__admin__descriptor};
#define N_SERVICES (sizeof services / sizeof services[0])

static unsigned total_methods(void) {
  unsigned n = 0;
  for (size_t s = 0; s < N_SERVICES; s++) n += services[s]->n_methods;
  return n;
}

/* The k-th method across all services (k < total_methods()). */
static const ProtobufCMethodDescriptor *method_at(unsigned k) {
  for (size_t s = 0; s < N_SERVICES; s++) {
    if (k < services[s]->n_methods) return &services[s]->methods[k];
    k -= services[s]->n_methods;
  }
  return NULL;
}

/* ---- the shape of a decoded message, as coverage --------------------------------------------- */

#define N_SHAPE_COUNTERS 8192
__attribute__((
    section("__libfuzzer_extra_counters"))) static uint8_t shape_counters[N_SHAPE_COUNTERS];

static void shape_hit(const void *desc, unsigned field, unsigned what, unsigned depth) {
  uint64_t h = (uint64_t)(uintptr_t)desc * 0x9E3779B97F4A7C15ull;
  h ^= (field * 0x100000001B3ull) ^ ((uint64_t)what << 40) ^
       ((uint64_t)(depth > 7 ? 7 : depth) << 56);
  h ^= h >> 29;
  uint8_t *c = &shape_counters[h % N_SHAPE_COUNTERS];
  if (*c < 255) (*c)++;
}

static unsigned bucket(size_t n) {
  return n == 0 ? 0 : n == 1 ? 1 : n < 4 ? 2 : n < 16 ? 3 : 4;
}

static int scalar_is_set(const ProtobufCFieldDescriptor *f, const void *p) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_ENUM: return *(const uint32_t *)p != 0;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE: return *(const uint64_t *)p != 0;
  case PROTOBUF_C_TYPE_BOOL: return *(const protobuf_c_boolean *)p != 0;
  case PROTOBUF_C_TYPE_STRING: {
    const char *str = *(char *const *)p;
    return str && str[0];
  }
  case PROTOBUF_C_TYPE_BYTES: return ((const ProtobufCBinaryData *)p)->len != 0;
  case PROTOBUF_C_TYPE_MESSAGE: return *(void *const *)p != NULL;
  }
  return 0;
}

/* Walks msg: sets shape counters; returns 1 if it (or a message inside it) holds an unknown
 * field numbered 0 (the quirk above). */
static int walk(const ProtobufCMessage *msg, unsigned depth) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  const uint8_t *base = (const uint8_t *)msg;
  int tag0 = 0;
  for (unsigned i = 0; i < msg->n_unknown_fields; i++) {
    shape_hit(d, 1000 + msg->unknown_fields[i].wire_type, bucket(msg->unknown_fields[i].len),
              depth);
    if (msg->unknown_fields[i].tag == 0) tag0 = 1;
  }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const void *member = base + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      shape_hit(d, i, 10 + bucket(n), depth);
      if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)member;
        for (size_t k = 0; k < n; k++) tag0 |= walk(items[k], depth + 1);
      }
      continue;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
      if (which != f->id) continue;
      shape_hit(d, i, 20, depth);
    }
    int set = scalar_is_set(f, member);
    shape_hit(d, i, set, depth);
    if (set && f->type == PROTOBUF_C_TYPE_MESSAGE)
      tag0 |= walk(*(const ProtobufCMessage *const *)member, depth + 1);
  }
  return tag0;
}

static uint8_t *pack_all(const ProtobufCMessage *msg, size_t *len) {
  size_t want = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(want ? want : 1);
  FUZZ_CHECK(buf != NULL);
  size_t wrote = protobuf_c_message_pack(msg, buf);
  FUZZ_CHECK(wrote == want);
  *len = wrote;
  return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned n = total_methods();
  unsigned pick = data[0] % (2 * n);
  const ProtobufCMethodDescriptor *m = method_at(pick % n);
  const ProtobufCMessageDescriptor *desc = pick < n ? m->input : m->output;
  FUZZ_CHECK(desc != NULL && desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);

  ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, size - 1, data + 1);
  if (!msg) return 0;
  FUZZ_CHECK(msg->descriptor == desc);
  FUZZ_CHECK(protobuf_c_message_check(msg));
  if (walk(msg, 0)) { /* the field-0 quirk: see the top of this file */
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
  }

  size_t len1, len2;
  uint8_t *bytes1 = pack_all(msg, &len1);
  ProtobufCMessage *msg2 = protobuf_c_message_unpack(desc, NULL, len1, bytes1);
  if (!msg2) {
    fprintf(stderr, "fuzz_proto: %s re-encoded to %zu bytes that do not decode\n", desc->name,
            len1);
    abort();
  }
  FUZZ_CHECK(protobuf_c_message_check(msg2));
  uint8_t *bytes2 = pack_all(msg2, &len2);
  if (len1 != len2 || memcmp(bytes1, bytes2, len1)) {
    fprintf(stderr, "fuzz_proto: %s: re-encoding is not a fixed point (%zu then %zu bytes)\n",
            desc->name, len1, len2);
    abort();
  }
  free(bytes2);
  free(bytes1);
  protobuf_c_message_free_unpacked(msg2, NULL);
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}
