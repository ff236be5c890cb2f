#!/usr/bin/env python3
"""make_corpus.py -- writes the seed corpora of tests/fuzz (corpus/<target>/); stdlib only.

    python3 tests/fuzz/make_corpus.py [OUT_DIR]     (default: tests/fuzz/corpus beside this file)

Seeds are small, valid (or nearly valid) inputs for each target, so that fuzzing starts past the
first checks: HTTP/2 + gRPC conversations, packed protobuf messages, GGUF files (a tiny Llama
model, a tokenizer, every metadata type), texts, LMDB values, and radix operation scripts. The
output is deterministic; the files are committed, and this script only regenerates them.
"""
import json
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- protobuf (wire format by hand) ------------------------------------------------------------

def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(num, v):
    return varint(num << 3) + varint(v)


def f_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint((num << 3) | 2) + varint(len(b)) + b


def f_float(num, x):
    return varint((num << 3) | 5) + struct.pack("<f", x)


def f_double(num, x):
    return varint((num << 3) | 1) + struct.pack("<d", x)


def packed_ints(num, vals):
    return f_bytes(num, b"".join(varint(v) for v in vals))


def prompt_text(t):
    return f_bytes(1, t)


def prompt_tokens(ids):
    return f_bytes(2, packed_ints(1, ids))


def prompt_chat(msgs, gen=True):
    body = b"".join(f_bytes(1, f_bytes(1, r) + f_bytes(2, c)) for r, c in msgs)
    if gen:
        body += f_varint(2, 1)
    return f_bytes(3, body)


SAMPLING = (f_float(1, 0.7) + f_varint(2, 40) + f_float(3, 0.9) + f_float(4, 0.05) + f_float(5, 1.1)
            + f_varint(6, 64) + f_varint(7, 12345) + f_varint(8, 1))
CACHE = f_bytes(1, "shared-docs") + f_varint(2, 0) + f_varint(3, 300)
TIERS = f_varint(1, 10) + f_varint(2, 20) + f_varint(3, 30)
LIMITS = f_bytes(1, TIERS) + f_varint(2, 4) + f_varint(3, 4096)
PREFIX_ID = "0123456789abcdef0123456789abcdef"

# (method index in declaration order, request bytes, response bytes)
METHODS = [
    ("Generate", f_bytes(1, prompt_text("Hello, world")) + f_bytes(2, SAMPLING) + f_varint(3, 16)
     + f_bytes(4, "\n\n") + f_bytes(4, "END") + packed_ints(5, [2, 7]) + f_bytes(6, CACHE),
     packed_ints(1, [17, 42]) + f_bytes(2, "Hi") + f_varint(3, 1)
     + f_bytes(4, f_varint(1, 12) + f_varint(2, 8) + f_bytes(3, TIERS) + f_varint(4, 2))
     + f_bytes(5, f_double(1, 0.5) + f_double(2, 0) + f_double(3, 12.5) + f_double(4, 13)
               + f_double(5, 4))),
    ("Tokenize", f_bytes(1, prompt_chat([("system", "Be brief."), ("user", "Hi")])),
     packed_ints(1, [1, 2, 3, 300, 49151])),
    ("Detokenize", packed_ints(1, [1, 2, 3, 0, 49151]) + f_varint(2, 1), f_bytes(1, "hello")),
    ("Warm", f_bytes(1, prompt_tokens([1, 2, 3, 4, 5])) + f_bytes(2, CACHE),
     f_varint(1, 5) + f_varint(2, 0) + f_varint(3, 5) + f_bytes(4, PREFIX_ID)),
    ("Lookup", f_bytes(1, prompt_text("What is the capital of France?")) + f_bytes(2, "ns"),
     f_varint(1, 9) + f_varint(2, 8) + f_bytes(3, TIERS)),
    ("ListPrefixes", f_varint(1, 100) + f_bytes(2, "cursor") + f_bytes(3, "alice"),
     f_bytes(1, f_bytes(1, PREFIX_ID) + f_bytes(2, "alice") + f_bytes(3, "") + f_varint(4, 32)
             + f_bytes(5, TIERS) + f_varint(6, 3) + f_varint(7, 1700000000000) + f_varint(8, 1)
             + f_varint(9, (1 << 64) - 1) + f_bytes(10, "You are"))
     + f_bytes(2, "next")),
    ("Evict", f_bytes(1, PREFIX_ID) + f_varint(4, 2), f_bytes(1, TIERS)),
    ("Pin", f_bytes(1, PREFIX_ID) + f_varint(2, 60), b""),
    ("Unpin", f_bytes(1, PREFIX_ID), b""),
    ("Stats", b"",
     f_bytes(1, f_varint(1, 1) + f_varint(2, 5) + f_varint(3, 10) + f_varint(4, 500)
             + f_varint(5, 1000) + f_varint(6, 1) + f_bytes(7, "ENOSPC"))
     + f_bytes(2, f_bytes(1, "alice") + f_bytes(2, TIERS) + f_varint(3, 7) + f_varint(4, 5)
               + f_varint(5, 9))
     + f_varint(3, 23040) + f_varint(4, 1) + f_varint(5, 2) + f_varint(6, 3) + f_varint(7, 0)
     + f_double(8, 188.5) + f_double(9, 3600) + f_bytes(10, "llama") + f_bytes(11, "cpu")),
    ("Health", b"", f_varint(1, 1)),
    ("CreateTenant", f_bytes(1, "alice") + f_bytes(2, LIMITS),
     f_bytes(1, f_bytes(1, "alice") + f_bytes(2, LIMITS) + f_bytes(3, "docs") + f_varint(4, 1))
     + f_bytes(2, "pfx-abc")),
    ("ListTenants", b"", f_bytes(1, f_bytes(1, "alice")) + f_bytes(1, f_bytes(1, "bob"))),
    ("DeleteTenant", f_bytes(1, "bob"), b""),
    ("SetLimits", f_bytes(1, "alice") + f_bytes(2, LIMITS), b""),
    ("RotateKey", f_bytes(1, "alice"), f_bytes(1, "pfx-def")),
    ("GrantNamespace", f_bytes(1, "alice") + f_bytes(2, "docs"), b""),
    ("RevokeNamespace", f_bytes(1, "alice") + f_bytes(2, "docs"), b""),
]
N_METHODS = len(METHODS)


def proto_corpus():
    for i, (name, req, resp) in enumerate(METHODS):
        write("proto", "%02d-%s-request" % (i, name), bytes([i]) + req)
        write("proto", "%02d-%s-response" % (N_METHODS + i, name), bytes([N_METHODS + i]) + resp)
    # odd but valid encodings: an unknown field, a non-minimal varint, a oneof given twice
    write("proto", "gen-unknown-field", bytes([0]) + f_varint(99, 5) + METHODS[0][1])
    write("proto", "health-long-varint", bytes([10]) + b"\x08\x81\x80\x80\x00")
    write("proto", "evict-oneof-twice",
          bytes([6]) + f_bytes(1, PREFIX_ID) + f_bytes(2, "bob") + f_varint(3, 1))


# ---- HTTP/2 and gRPC --------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    head = struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream)
    return head + payload


def hpack_int(prefix_bits, first, v):
    limit = (1 << prefix_bits) - 1
    if v < limit:
        return bytes([first | v])
    out = bytearray([first | limit])
    v -= limit
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(7, 0, len(name)) + name + hpack_int(7, 0, len(value)) + value


def hpack_literal_indexed_name(index, value):
    value = value.encode()
    return hpack_int(4, 0, index) + hpack_int(7, 0, len(value)) + value


def request_headers(path, extra=(), content_type="application/grpc"):
    block = b"\x83\x86"  # :method POST, :scheme http (static table)
    block += hpack_literal_indexed_name(4, path)  # :path
    block += hpack_literal_indexed_name(1, "localhost")  # :authority
    block += hpack_literal("content-type", content_type)
    block += hpack_literal("te", "trailers")
    for k, v in extra:
        block += hpack_literal(k, v)
    return block


def grpc_message(payload, compressed=0, length=None):
    n = len(payload) if length is None else length
    return bytes([compressed]) + struct.pack(">I", n) + payload


END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS = frame(4, 0, 0, b"")
SETTINGS_ACK = frame(4, ACK, 0, b"")


def call(stream, method, body, extra=(), end=True, **kw):
    path = "/prefixd.v1.Prefixd/" + method
    return (frame(1, END_HEADERS, stream, request_headers(path, extra, **kw))
            + frame(0, END_STREAM if end else 0, stream, grpc_message(body)))


def headers(stream, method, flags=END_HEADERS, service="prefixd.v1.Prefixd"):
    return frame(1, flags, stream, request_headers("/%s/%s" % (service, method)))


def data(stream, payload, flags=END_STREAM):
    return frame(0, flags, stream, payload)


RST_CANCEL = struct.pack(">I", 8)


def grpc_corpus():
    auth = [("grpc-timeout", "5S"), ("authorization", "Bearer pfx-key")]
    health = call(1, "Health", b"", extra=auth)
    gen, tok, detok = METHODS[0][1], METHODS[1][1], METHODS[2][1]
    health_block = request_headers("/prefixd.v1.Prefixd/Health")
    seeds = {
        "health": health,
        "health-ack-ping": SETTINGS_ACK + frame(6, 0, 0, b"12345678") + health,
        "tokenize": call(1, "Tokenize", tok),
        "stats-trailers-only": call(1, "Stats", b""),
        "generate-held": call(1, "Generate", gen),
        "generate-then-reset": call(1, "Generate", gen) + frame(3, 0, 1, RST_CANCEL),
        "detokenize-held": call(1, "Detokenize", detok),
        "three-streams": call(1, "Health", b"") + call(3, "Generate", gen)
        + call(5, "Detokenize", detok) + frame(8, 0, 0, struct.pack(">I", 65535)),
        "unknown-method": call(1, "Nope", b""),
        "admin-unrouted": headers(1, "ListTenants", service="prefixd.v1.Admin")
        + data(1, grpc_message(b"")),
        "bad-content-type": call(1, "Health", b"", content_type="text/plain"),
        "bad-timeout": call(1, "Health", b"", extra=[("grpc-timeout", "99X")]),
        "compressed": headers(1, "Health") + data(1, grpc_message(b"\x08\x01", compressed=1)),
        "length-mismatch": headers(1, "Health") + data(1, grpc_message(b"\x08\x01", length=7)),
        "malformed-message": headers(1, "Tokenize") + data(1, grpc_message(b"\x0a\x05ab")),
        "reset-before-body": headers(1, "Health") + frame(3, 0, 1, RST_CANCEL),
        "no-body": headers(1, "Health", flags=END_HEADERS | END_STREAM),
        "split-data": headers(1, "Tokenize") + data(1, grpc_message(tok)[:4], flags=0)
        + data(1, grpc_message(tok)[4:]),
        "continuation": frame(1, 0, 1, health_block[:10])
        + frame(9, END_HEADERS, 1, health_block[10:]) + data(1, grpc_message(b"")),
        "goaway": health + frame(7, 0, 0, struct.pack(">II", 1, 0)),
    }
    streams = {name: PREFACE + SETTINGS + body for name, body in seeds.items()}
    streams["bad-preface"] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for i, (name, stream) in enumerate(sorted(streams.items())):
        # control byte: cut points spread over the stream; every other seed finishes held calls
        control = ((i * 37) % 128) | (0x80 if i % 2 else 0)
        write("grpc", name, bytes([control]) + stream)


# ---- GGUF ---------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
          U64: "<Q", I64: "<q", F64: "<d"}
T_F32, T_F16, T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0 = 0, 1, 2, 3, 6, 7, 8
T_Q4_K, T_Q6_K, T_BF16 = 12, 14, 30
# elements per block, bytes per block
BLOCK = {T_F32: (1, 4), T_F16: (1, 2), T_BF16: (1, 2), T_Q4_0: (32, 18), T_Q4_1: (32, 20),
         T_Q5_0: (32, 22),
         T_Q5_1: (32, 24), T_Q8_0: (32, 34), T_Q4_K: (256, 144), T_Q6_K: (256, 210)}


def gstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<Q", len(s)) + s


def gvalue(vtype, v):
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gvalue(etype, x) for x in items)
    return struct.pack(SCALAR[vtype], v)


def tensor_bytes(ttype, ne, rng):
    per, size = BLOCK[ttype]
    rows = 1
    for d in ne[1:]:
        rows *= d
    n = ne[0] // per * size * rows
    if ttype == T_F32:
        return b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(n // 4))
    if ttype in (T_F16, T_BF16):
        one = 0x3C00 if ttype == T_F16 else 0x3F80
        return b"".join(struct.pack("<H", one) for _ in range(n // 2))
    # quantized: small finite scales (f16 0x2000) then random bytes
    out = bytearray(rng.randrange(256) for _ in range(n))
    for b in range(0, n, size):
        out[b:b + 2] = b"\x00\x20"
        if ttype in (T_Q4_1, T_Q5_1):
            out[b + 2:b + 4] = b"\x00\x20"
    return bytes(out)


def gguf(kvs, tensors, version=3, alignment=32, seed=1):
    rng = random.Random(seed)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        head += gstr(key) + struct.pack("<I", vtype) + gvalue(vtype, v)
    data, infos = b"", b""
    for name, ttype, ne in tensors:
        if len(data) % alignment:
            data += b"\0" * (alignment - len(data) % alignment)
        infos += gstr(name) + struct.pack("<I", len(ne))
        infos += b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", ttype, len(data))
        data += tensor_bytes(ttype, ne, rng)
    head += infos
    if len(head) % alignment:
        head += b"\0" * (alignment - len(head) % alignment)
    return head + data


def byte_char(b):
    printable = 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
    if printable:
        return chr(b)
    n = sum(1 for x in range(b) if not (33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255))
    return chr(256 + n)


def bpe_vocab(words):
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [byte_char(b) for b in range(256)]
    types = [3, 3, 3] + [1] * 256
    merges = []
    for w in words:
        enc = "".join(byte_char(b) for b in w.encode())
        for k in range(1, len(enc)):
            merged = enc[:k + 1]
            if merged not in tokens:
                tokens.append(merged)
                types.append(1)
                merges.append(enc[:k] + " " + enc[k])
    return tokens, types, merges


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tokenizer_kvs(words, pre="smollm"):
    tokens, types, merges = bpe_vocab(words)
    return [
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, pre),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.chat_template", STRING, CHATML),
    ]


def gguf_corpus():
    d, heads, kv_heads, ffn, vocab = 32, 2, 1, 32, 8
    hd = d // heads
    model_kvs = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz-tiny"),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, d),
        ("llama.feed_forward_length", U32, ffn),
        ("llama.attention.head_count", U32, heads),
        ("llama.attention.head_count_kv", U32, kv_heads),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.rope.dimension_count", U32, hd),
    ]
    tensors = [
        ("token_embd.weight", T_Q8_0, [d, vocab]),
        ("output_norm.weight", T_F32, [d]),
        ("blk.0.attn_norm.weight", T_F32, [d]),
        ("blk.0.attn_q.weight", T_Q8_0, [d, heads * hd]),
        ("blk.0.attn_k.weight", T_F16, [d, kv_heads * hd]),
        ("blk.0.attn_v.weight", T_F32, [d, kv_heads * hd]),
        ("blk.0.attn_output.weight", T_Q8_0, [heads * hd, d]),
        ("blk.0.ffn_norm.weight", T_F32, [d]),
        ("blk.0.ffn_gate.weight", T_Q4_0, [d, ffn]),
        ("blk.0.ffn_up.weight", T_Q5_1, [d, ffn]),
        ("blk.0.ffn_down.weight", T_Q8_0, [ffn, d]),
    ]
    small_words = ["he", "hello", " the", "in", "ing"]
    write("gguf", "tiny-llama", gguf(model_kvs + tokenizer_kvs(small_words), tensors))
    qwen = [(k.replace("llama", "qwen2"), t, v) for k, t, v in model_kvs]
    qwen[0] = ("general.architecture", STRING, "qwen2")
    qwen_tensors = tensors + [
        ("blk.0.attn_q.bias", T_F32, [heads * hd]),
        ("blk.0.attn_k.bias", T_F32, [kv_heads * hd]),
        ("blk.0.attn_v.bias", T_F32, [kv_heads * hd]),
        ("output.weight", T_F16, [d, vocab]),
    ]
    qwen_kvs = qwen + tokenizer_kvs(small_words, pre="gpt2")
    write("gguf", "tiny-qwen2-untied", gguf(qwen_kvs, qwen_tensors, seed=2))
    words = ["the", " the", "hello", " world", "ing", "\u00e9", "caf\u00e9", "\u20ac", "12"]
    write("gguf", "tokenizer-only", gguf(tokenizer_kvs(words), []))
    every_type = [
        ("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -300),
        ("u32", U32, 4000000000),
        ("i32", I32, -7), ("f32", F32, 1.5), ("bool", BOOL, 1), ("str", STRING, "text"),
        ("u64", U64, 1 << 40), ("i64", I64, -(1 << 40)), ("f64", F64, 2.5),
        ("general.alignment", U32, 64),
        ("a.u8", ARRAY, (U8, [1, 2, 3])), ("a.i16", ARRAY, (I16, [-1, 1])),
        ("a.f32", ARRAY, (F32, [0.5])), ("a.f64", ARRAY, (F64, [0.25, 4.0])),
        ("a.bool", ARRAY, (BOOL, [0, 1])), ("a.u64", ARRAY, (U64, [9])),
        ("a.str", ARRAY, (STRING, ["x", "", "yz"])), ("a.empty", ARRAY, (I32, [])),
        ("llama.block_count", U64, 1), ("llama.embedding_length", I64, 32),
        ("llama.attention.layer_norm_rms_epsilon", F64, 1e-6),
        ("general.architecture", STRING, "llama"),
    ]
    all_types = [("t.f32", T_F32, [4, 2]), ("t.f16", T_F16, [8]), ("t.bf16", T_BF16, [2, 2, 2]),
                 ("t.q4_0", T_Q4_0, [32]), ("t.q4_1", T_Q4_1, [32, 2]),
                 ("t.q5_0", T_Q5_0, [32, 1, 1, 2]),
                 ("t.q5_1", T_Q5_1, [64]), ("t.q8_0", T_Q8_0, [32]), ("t.q4_k", T_Q4_K, [256]),
                 ("t.q6_k", T_Q6_K, [256])]
    write("gguf", "every-type", gguf(every_type, all_types, alignment=64, seed=3))
    arch_only = [("general.architecture", STRING, "llama")]
    write("gguf", "version2-empty", gguf(arch_only, [], version=2))
    write("gguf", "header-only", b"GGUF" + struct.pack("<IQQ", 3, 0, 0))


# ---- tokenizer texts ----------------------------------------------------------------------------

def tokenizer_corpus():
    texts = {
        "english": "Hello, world! The quick brown fox jumps over the lazy dog. It's 2024, "
                   "isn't it?",
        "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                  "<|im_start|>assistant\n",
        "specials-overlap": "<|im_start|>tool<|im_start|><|im_end|x<|endoftext|><|im",
        "numbers": "1234567890 3.14159 -42 1e10 0x1F 2024-01-01 12:30",
        "code": "int main(void) {\n\treturn x->y[3] + 'a';\n}\n    # comment\r\n",
        "whitespace": "a  b   c\t\td\n\n\ne \u00a0f\u3000g   ",
        "multilingual": "caf\u00e9 na\u00efve \u20ac5 \u4e2d\u6587 "
                        "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 "
                        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \U0001F600\U0001F44D "
                        "\u0939\u093f\u0928\u094d\u0926\u0940",
        "contractions": "I'm you're we've they'll he'd she's it't 'S 'LL",
    }
    for name, t in texts.items():
        write("tokenizer", name, t.encode())
    write("tokenizer", "invalid-utf8",
          b"ok \xff\xfe \xc3 \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\x80 end")
    write("tokenizer", "control-bytes", bytes(range(0, 32)) + b"\x7f")


# ---- disk-tier index values --------------------------------------------------------------------

def kv_value(n_tokens, block_tokens, payload, magic=0x564B4450, version=2, page=0,
             payload_bytes=None):
    """Format 2: header and tokens, the payload's size and page in the header (payload unused).
    Format 1: header, tokens and the payload itself."""
    if payload_bytes is None:
        payload_bytes = len(payload)
    tokens = b"".join(struct.pack("<i", 100 + i) for i in range(n_tokens))
    hdr = struct.pack("<IHBBHHI", magic, version, 1, 0, block_tokens, n_tokens, payload_bytes)
    hdr += bytes(range(16)) + bytes(range(16, 32))  # fingerprint, parent key
    hdr += struct.pack("<QII", 0x0123456789ABCDEF, 7, page)  # checksum, namespace, page
    assert len(hdr) == 64
    return hdr + tokens + (payload if version == 1 else b"")


def kvstore_corpus():
    write("kvstore_hdr", "full-block", kv_value(16, 16, b"", page=12, payload_bytes=368640))
    write("kvstore_hdr", "partial-block", kv_value(3, 16, b"", page=0xFFFFFFFF, payload_bytes=10))
    write("kvstore_hdr", "no-payload", kv_value(1, 1, b""))
    write("kvstore_hdr", "v1-full-block", kv_value(16, 16, bytes(range(64)), version=1))
    write("kvstore_hdr", "v1-partial-block", kv_value(3, 16, b"\xaa" * 10, version=1))
    write("kvstore_hdr", "reserved-set", kv_value(2, 4, b"xy", version=1, page=0xFFFFFFFF))
    write("kvstore_hdr", "bad-magic", kv_value(2, 4, b"xy", magic=0x12345678))
    write("kvstore_hdr", "future-version", kv_value(2, 4, b"xy", version=3))
    write("kvstore_hdr", "short", kv_value(2, 4, b"xy")[:40])


# ---- radix operation scripts --------------------------------------------------------------------

def radix_corpus():
    # header: B/mask byte, tier capacities; ops: an opcode byte then its arguments (fuzz_radix.c)
    MATCH, INSERT, EXTEND, RELEASE, EVICT, PLACE, DROP = 0, 2, 4, 5, 6, 7, 8
    PIN, UNPIN, EXPIRE, TENANT, LIST = 9, 10, 11, 12, 13

    def prompt(family, length, change=0):
        return [family | (length << 2), change]

    collide = []
    for t in range(12):
        collide += [INSERT, t % 3, t % 3] + prompt(t % 4, 5 + t)
    scripts = {
        "insert-match": [2, 8, 4, 16] + [INSERT, 0, 8] + prompt(0, 20)
        + [MATCH, 0, 1] + prompt(0, 24) + [MATCH, 0, 0] + prompt(2, 10)
        + [RELEASE, 0, 0] + [LIST, 3],
        "evict-place-drop": [1, 3, 2, 8] + [INSERT, 0, 0] + prompt(0, 9)
        + [INSERT, 1, 0] + prompt(1, 12) + [EVICT, 0, 7] + [PLACE, 1, 1] + [PLACE, 3, 2]
        + [DROP, 1, 0] + [EVICT, 3, 3] + [DROP, 0, 1],
        "pins-expire": [3, 16, 4, 4] + [INSERT, 0, 0] + prompt(0, 40) + [PIN, 0, 10]
        + [PIN, 2, 0xff] + [EVICT, 0, 7] + [EXPIRE, 20] + [UNPIN, 2] + [EVICT, 0, 7] + [LIST, 3],
        "extend-chain": [2, 31, 10, 20] + [INSERT, 0, 8] + prompt(0, 8)
        + [EXTEND, 0, 4, 0] + prompt(1, 12) + [EXTEND, 0, 12, 0] + prompt(3, 6)
        + [MATCH, 0, 1] + prompt(0, 30) + [RELEASE, 0, 1] + [RELEASE, 1, 0],
        "collisions": [0b0101, 20, 0, 30] + collide + [MATCH, 0, 0] + prompt(0, 12),
        "tenants-limits": [2, 6, 6, 6] + [TENANT, 1, 1, 2] + [INSERT, 1, 0] + prompt(0, 30)
        + [TENANT, 0, 5] + [INSERT, 4, 0] + prompt(0, 16) + [MATCH, 1, 0] + prompt(0, 16)
        + [EVICT, 1, 7],
        "shared-namespace": [2, 12, 4, 4] + [INSERT, 4, 0] + prompt(0, 16)
        + [MATCH, 5, 0] + prompt(0, 16) + [MATCH, 6, 0] + prompt(0, 16)
        + [INSERT, 8, 0] + prompt(1, 16),
    }
    for name, ops in scripts.items():
        write("radix", name, bytes(b & 0xFF for b in ops))
    rng = random.Random(9)
    for i in range(4):
        write("radix", "random-%d" % i, bytes(rng.randrange(256) for _ in range(300)))


# ---- OpenAI-compatible request bodies ----------------------------------------------------------

def openai_corpus():
    # byte 0: 0 = /v1/chat/completions, 1 = /v1/completions (fuzz_openai.c); then the JSON body
    chat = {
        "plain": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "everything": {"model": "m", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "\u00e9\u4e2d"}]},
            {"role": "assistant", "content": None}, {"role": "user", "content": "more"}],
            "max_completion_tokens": 12, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
            "min_p": 0.05, "repetition_penalty": 1.1, "seed": -3, "stop": ["\n", "END"],
            "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
            "top_logprobs": 5, "n": 1, "presence_penalty": 0, "ignore_eos": False,
            "response_format": {"type": "text"}, "user": "u"},
        "refused": {"messages": [{"role": "tool", "content": "x"}], "n": 3, "tools": [{}]},
    }
    completions = {
        "text": {"prompt": "Once upon a time", "max_tokens": 5, "logprobs": 2, "stop": "."},
        "ids": {"prompt": [1, 2, 3, 40000], "echo": False, "suffix": ""},
        "one-of-list": {"prompt": ["hello"], "temperature": 1e300},
    }
    for name, body in chat.items():
        write("openai", "chat-" + name, b"\x00" + json.dumps(body).encode())
    for name, body in completions.items():
        write("openai", "completions-" + name, b"\x01" + json.dumps(body).encode())
    write("openai", "not-json", b"\x00{\"messages\": [")
    write("openai", "deep", b"\x01" + b"[" * 3000 + b"]" * 3000)


def json_schema_corpus():
    # the schema, a NUL byte, the document (fuzz_json_schema.c)
    place = {"type": "object", "properties": {"city": {"type": "string"}, "near": {
        "anyOf": [{"$ref": "#/$defs/Place"}, {"type": "null"}]}}, "required": ["city"]}
    person = {"type": "object", "properties": {
        "name": {"type": "string", "title": "Name"}, "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", 7, None]}, "tags": {"type": "array", "items": {
            "type": "string"}, "minItems": 1, "maxItems": 3}, "home": {"$ref": "#/$defs/Place"},
        "extra": {}}, "required": ["name", "age"], "$defs": {"Place": place}}
    docs = {
        "person": (person, {"name": "A\u00e9", "age": -3, "role": 7, "tags": ["x"],
                            "home": {"city": "Oslo", "near": None}, "extra": [1.5e3, True]}),
        "enum-numbers": ({"enum": [1, 12, 123]}, 12),
        "integer": ({"type": "integer"}, 42),
        "nullable-array": ({"type": "array", "items": {"type": ["number", "null"]},
                            "nullable": True}, [1, None, -0.5]),
        "free-object": ({"type": "object"}, {"a": {"b": [1, "\n"]}}),
        "refused": ({"type": "string", "pattern": "(?=a)"}, "a"),
        "pattern": ({"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{4}(x|y)*$", "maxLength": 9},
            "any": {"type": "string", "pattern": "\u00e9+", "minLength": 2}}},
            {"code": "AB-1234x", "any": "\u00e9\u00e9\n"}),
        "formats": ({"type": "array", "items": {"anyOf": [
            {"type": "string", "format": "date-time"}, {"type": "null"}]}},
            ["2024-02-29T23:59:59.5+01:00", None]),
        "bounds": ({"type": "object", "properties": {
            "p": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "n": {"type": "integer", "minimum": -3, "maximum": 120}}}, {"p": 0.25, "n": -2}),
    }
    for name, (schema, doc) in docs.items():
        write("json_schema", name, json.dumps(schema).encode() + b"\x00" + json.dumps(doc).encode())
    write("json_schema", "plain-only", b'{"k": [true, false, null, "\\u00e9"]}')


def main():
    proto_corpus()
    grpc_corpus()
    gguf_corpus()
    tokenizer_corpus()
    kvstore_corpus()
    radix_corpus()
    openai_corpus()
    json_schema_corpus()


if __name__ == "__main__":
    main()
