"""prefixd end to end on a synthetic model (no download): every RPC through a stock grpcio
client, tenants and keys, isolation, cancellation and deadlines, bad input, draining, restart."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from conftest import Daemon, chat, generate, pb, pb_grpc
from pd_stubs import generate_stubs

health_pb, health_grpc = generate_stubs("grpc/health/v1/health.proto")
SERVING = health_pb.HealthCheckResponse.SERVING
NOT_SERVING = health_pb.HealthCheckResponse.NOT_SERVING

ADMIN = "admin-key-for-tests-0123456789"
SYSTEM = "You are a terse assistant who answers in one word. " * 6


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("the call should have failed")


@pytest.fixture
def single(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir)
    yield d
    assert d.stop() == 0


def test_long_prompts_are_tokenized_off_the_engine_thread(data_dir):
    """Prompts over 16 KiB of text (Generate, Warm, Tokenize, Lookup; text or chat) go to the
    tokenizer thread and come back with the very tokens the tokenizer gives in-process
    (pd_tokenize_tool), cached and matched the same way; several at once beside short ones each
    get their own; an error found after the round trip (over the context) is reported as
    before."""
    model = os.path.join(data_dir, "tiny-long.gguf")  # the synthetic shape, a 32k context
    mkgguf = os.path.join(os.path.dirname(os.environ["PREFIXD_BIN"]), "prefixd-mkgguf")
    subprocess.run([mkgguf, "-o", model, "--ctx", "32768"], check=True, capture_output=True)

    def reference(*texts):
        out = subprocess.run([os.environ["PD_TOKENIZE_TOOL"], model], check=True,
                             capture_output=True, input="\0".join(texts).encode()).stdout
        return [[int(x) for x in line.split(",") if x] for line in out.decode().splitlines()]
    os.mkdir(os.path.join(data_dir, "d"))
    d = Daemon(model, os.path.join(data_dir, "d"), extra=["--kv-cache-mb", "64"])
    try:
        s = d.stub()
        text = "".join(f"line {i}: the shared preamble of a long document. " for i in range(330))
        assert len(text.encode()) > 16384  # 13,751 tokens (a 512-token byte-level vocabulary)
        prompt = pb.Prompt(text=text)
        (want,) = reference(text)
        assert list(s.Tokenize(pb.TokenizeRequest(prompt=prompt)).token_ids) == want
        n = len(want)
        w = s.Warm(pb.WarmRequest(prompt=prompt))
        assert w.prompt_tokens == n and w.computed_tokens == n
        assert s.Lookup(pb.LookupRequest(prompt=prompt)).cached_tokens == n
        _, ids, final = generate(s, prompt, max_tokens=4, sampling=pb.SamplingParams(ignore_eos=True))
        assert final.usage.prompt_tokens == n and final.usage.cached_tokens == n - 1
        # the same text as a chat message: the template's tokens around it
        msgs = chat(("user", text))
        _, _, cf = generate(s, msgs, max_tokens=2, sampling=pb.SamplingParams(ignore_eos=True))
        templated = s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(
            chat=pb.ChatMessages(messages=msgs.chat.messages, add_generation_prompt=True))))
        assert cf.usage.prompt_tokens == len(templated.token_ids) > n
        # several at once, interleaved with short ones: each gets its own answer
        results = {}

        def run(k, p):
            results[k] = generate(s, p, max_tokens=2)[2].usage.prompt_tokens
        prompts = [text + f" question {k}" if k % 2 else f"short {k}" for k in range(6)]
        threads = [threading.Thread(target=run, args=(k, pb.Prompt(text=p)))  # long ones cached
                   for k, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert results == {k: len(ids) for k, ids in enumerate(reference(*prompts))}
        code, msg = code_of(lambda: s.Warm(pb.WarmRequest(prompt=pb.Prompt(text=text * 12))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "context limit" in msg
        # the tokenizer thread's own refusals keep their reasons, for calls and generations
        bad = chat(("robot", text))
        for call in (lambda: s.Tokenize(pb.TokenizeRequest(prompt=bad)),
                     lambda: generate(s, bad, max_tokens=1)):
            code, msg = code_of(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "no valid role" in msg, msg
    finally:
        assert d.stop() == 0


def test_grpc_health_protocol_check_watch_and_drain(tiny_model, data_dir):
    """grpc.health.v1 as stock probes use it: Check per service name, NOT_FOUND for an unknown
    one, Watch streams the status now and NOT_SERVING once SIGTERM starts the drain."""
    d = Daemon(tiny_model, data_dir, extra=["--drain-timeout", "300"])
    h = health_grpc.HealthStub(d.channel())
    for name in ("", "prefixd.v1.Prefixd", "prefixd.v1.Admin"):
        assert h.Check(health_pb.HealthCheckRequest(service=name), timeout=30).status == SERVING
    code, details = code_of(lambda: h.Check(health_pb.HealthCheckRequest(service="nope"),
                                            timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and 'unknown service "nope"' in details
    unknown = h.Watch(health_pb.HealthCheckRequest(service="nope"), timeout=300)
    assert next(unknown).status == health_pb.HealthCheckResponse.SERVICE_UNKNOWN
    gone = h.Watch(health_pb.HealthCheckRequest(service=""), timeout=300)
    assert next(gone).status == SERVING
    gone.cancel()  # the daemon drops the watch and goes on
    watch = h.Watch(health_pb.HealthCheckRequest(service="prefixd.v1.Prefixd"), timeout=300)
    assert next(watch).status == SERVING
    assert h.Check(health_pb.HealthCheckRequest(), timeout=30).status == SERVING

    # a generation that is under way when SIGTERM comes keeps the drain open (about 0.3 s of
    # tokens left here) while the watch hears of it
    stream = d.stub().Generate(pb.GenerateRequest(
        prompt=pb.Prompt(text="long story " * 10), max_tokens=2000,
        sampling=pb.SamplingParams(temperature=1.0, seed=3, ignore_eos=True)), timeout=300)
    first = next(stream)
    assert not first.finish_reason
    d.proc.send_signal(signal.SIGTERM)
    assert next(watch).status == NOT_SERVING
    final = [m for m in stream if m.finish_reason]
    assert final and final[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert d.proc.wait(300) == 0
    assert d.stop() == 0


def generate_with_logprobs(stub, ids, **kw):
    """(generated ids, their TokenLogprob messages) of a Generate over token ids."""
    out, lps = [], []
    for m in stub.Generate(pb.GenerateRequest(prompt=pb.Prompt(tokens=pb.TokenIds(ids=ids)), **kw),
                           timeout=120):
        assert len(m.logprobs) == (len(m.token_ids) if kw.get("logprobs") or
                                   kw.get("top_logprobs") else 0)
        out += list(m.token_ids)
        lps += list(m.logprobs)
    return out, lps


def test_logprobs_are_the_models_distribution(single, tiny_model):
    """Logprobs against the numpy reference forward pass (tests/reference/llama_ref.py) on the
    daemon's own tokens: greedy and sampled at temperature 20 (the values are the raw model's,
    not the sampling distribution's), the top list's order, a cached prompt giving the same values,
    and the limit on top_logprobs."""
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
    import llama_ref
    s = single.stub()
    prompt = list(s.Tokenize(pb.TokenizeRequest(
        prompt=pb.Prompt(text="The quick brown fox jumps over the lazy dog, again and"))).token_ids)
    model = llama_ref.Model(tiny_model)

    def reference(gen):  # (len(gen), n_vocab) log-softmax of the logits that chose each token
        logits = llama_ref.forward(model, prompt + gen).astype(np.float64)[len(prompt) - 1:-1]
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    greedy_ids, greedy_lps = generate_with_logprobs(s, prompt, max_tokens=12, logprobs=True,
                                                    top_logprobs=5)
    sampled_ids, sampled_lps = generate_with_logprobs(
        s, prompt, max_tokens=12, top_logprobs=3,
        sampling=pb.SamplingParams(temperature=20, seed=11, ignore_eos=True))
    assert greedy_ids and sampled_ids and greedy_ids != sampled_ids
    worst = 0.0
    for gen, lps, n_top in ((greedy_ids, greedy_lps, 5), (sampled_ids, sampled_lps, 3)):
        ref = reference(gen)
        for i, (tok, lp) in enumerate(zip(gen, lps)):
            assert lp.token_id == tok and lp.logprob <= 0
            assert len(lp.top_ids) == len(lp.top_logprobs) == n_top
            assert list(lp.top_logprobs) == sorted(lp.top_logprobs, reverse=True)
            assert sum(np.exp(lp.top_logprobs)) <= 1 + 1e-5
            if tok in lp.top_ids:
                assert lp.top_logprobs[list(lp.top_ids).index(tok)] == lp.logprob
            pairs = [(lp.logprob, ref[i, tok])] + [(v, ref[i, t]) for t, v in
                                                    zip(lp.top_ids, lp.top_logprobs)]
            worst = max(worst, *(abs(got - want) / (1 + abs(want)) for got, want in pairs))
    for tok, lp in zip(greedy_ids, greedy_lps):
        assert lp.top_ids[0] == tok  # greedy takes the most probable
    # int8 activations and an f16 cache against float32 numpy: 0.2% of values near -40 nats
    assert worst < 0.01, f"logprobs differ from the reference by {worst:.4f} (relative to 1+|ref|)"

    again_ids, again_lps = generate_with_logprobs(s, prompt, max_tokens=12, logprobs=True,
                                                  top_logprobs=5)
    assert again_ids == greedy_ids
    assert max(abs(a.logprob - b.logprob) for a, b in zip(again_lps, greedy_lps)) < 1e-3
    code, details = code_of(lambda: generate_with_logprobs(s, prompt, top_logprobs=21))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_logprobs" in details
    plain, none = generate_with_logprobs(s, prompt, max_tokens=4)
    assert plain == greedy_ids[:4] and none == []


@pytest.fixture
def multi(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    yield d
    assert d.stop() == 0


def test_single_tenant_start_line_and_health(single):
    assert "mode=single-tenant" in single.log_text()
    assert "cache_dtype=f16 kv_bytes_per_token=" in single.log_text()
    r = single.stub().Health(pb.HealthRequest())
    assert r.status == pb.HealthResponse.STATUS_SERVING


def test_tokenize_detokenize_roundtrip(single):
    s = single.stub()
    ids = list(s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hello world"))).token_ids)
    assert ids
    assert s.Detokenize(pb.DetokenizeRequest(token_ids=ids)).text == "hello world"
    chat_ids = s.Tokenize(pb.TokenizeRequest(prompt=chat(("user", "hi")))).token_ids
    text = s.Detokenize(pb.DetokenizeRequest(token_ids=chat_ids, render_special=True)).text
    assert text == "<|im_start|>user\nhi<|im_end|>\n", text


def test_llama3_model_bos_template_and_shared_prompt(data_dir):
    """A model with Llama 3's conventions (prefixd-mkgguf --chat llama3 --rope-freqs): prompts
    open with the bos token once, chat renders its template, the shared system prompt is reused
    by the next session."""
    path = os.environ.get("PD_TINY_LLAMA3")
    if not path or not os.path.exists(path):
        pytest.skip("PD_TINY_LLAMA3 not built")
    d = Daemon(path, data_dir)
    try:
        s = d.stub()
        ids = list(s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hello"))).token_ids)
        bos = list(s.Tokenize(pb.TokenizeRequest(
            prompt=pb.Prompt(text="<|begin_of_text|>"))).token_ids)
        assert len(bos) == 1 and ids[0] == bos[0] and bos[0] not in ids[1:], (ids, bos)
        chat_ids = s.Tokenize(pb.TokenizeRequest(prompt=chat(("user", " hi ")))).token_ids
        text = s.Detokenize(pb.DetokenizeRequest(token_ids=chat_ids, render_special=True)).text
        assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi"
                        "<|eot_id|>"), text
        _, _, f1 = generate(s, chat(("system", SYSTEM), ("user", "first")), max_tokens=4)
        _, _, f2 = generate(s, chat(("system", SYSTEM), ("user", "second")), max_tokens=4)
        assert f1.usage.cached_tokens == 0
        n_sys = len(s.Tokenize(pb.TokenizeRequest(prompt=chat(("system", SYSTEM)))).token_ids)
        assert f2.usage.cached_tokens >= n_sys - 16, (f2.usage, n_sys)
    finally:
        assert d.stop() == 0


def test_generate_streams_and_second_request_reuses_system_prompt(single):
    s = single.stub()
    n_sys = len(s.Tokenize(pb.TokenizeRequest(prompt=chat(("system", SYSTEM)))).token_ids)
    text, ids, f1 = generate(s, chat(("system", SYSTEM), ("user", "first question")),
                             max_tokens=8)
    assert f1.usage.cached_tokens == 0
    assert f1.usage.generated_tokens == len(ids) <= 8
    _, _, f2 = generate(s, chat(("system", SYSTEM), ("user", "second question")), max_tokens=8)
    assert f2.usage.cached_tokens >= n_sys - 16, (f2.usage, n_sys)
    assert f2.usage.cached_tokens_by_tier.device == f2.usage.cached_tokens
    # (how much sooner the first token comes is a figure of bench/daemon, not a unit test's)


def test_same_seed_same_tokens_cached_or_not(single):
    s = single.stub()
    prompt = pb.Prompt(text="the quick brown fox " * 10)
    samp = pb.SamplingParams(temperature=0.8, top_k=40, seed=7)
    _, a, fa = generate(s, prompt, sampling=samp, max_tokens=12,
                        cache=pb.CacheOptions(no_cache=True))
    _, b, _ = generate(s, prompt, sampling=samp, max_tokens=12)  # cold, fills the cache
    _, c, fc = generate(s, prompt, sampling=samp, max_tokens=12)  # from the cache
    assert fa.usage.cached_tokens == 0 and fc.usage.cached_tokens > 0
    assert a == b == c


def test_multi_turn_reuses_the_answer(single):
    s = single.stub()
    turn1 = [("system", SYSTEM), ("user", "tell me something")]
    text, ids, f1 = generate(s, chat(*turn1), max_tokens=24)
    n1 = f1.usage.prompt_tokens
    turn2 = turn1 + [("assistant", text), ("user", "and then?")]
    _, _, f2 = generate(s, chat(*turn2), max_tokens=4)
    # the first turn's prompt, and the answer as far as it re-tokenizes the same way
    assert f2.usage.cached_tokens >= n1, (f2.usage, n1, len(ids))


def test_warm_lookup_pin_list_evict(single):
    s = single.stub()
    prompt = pb.Prompt(text="a document to cache. " * 20)
    w = s.Warm(pb.WarmRequest(prompt=prompt))
    assert w.computed_tokens == w.prompt_tokens > 0 and len(w.prefix_id) == 32
    w2 = s.Warm(pb.WarmRequest(prompt=prompt))
    assert w2.cached_tokens == w2.prompt_tokens and w2.computed_tokens == 0
    assert w2.prefix_id == w.prefix_id
    lk = s.Lookup(pb.LookupRequest(prompt=prompt))
    assert lk.cached_tokens == lk.prompt_tokens == w.prompt_tokens
    assert lk.cached_tokens_by_tier.device == lk.cached_tokens
    s.Pin(pb.PinRequest(prefix_id=w.prefix_id))
    listed = {p.id: p for p in s.ListPrefixes(pb.ListPrefixesRequest()).prefixes}
    assert listed[w.prefix_id].pinned and listed[w.prefix_id].token_count == w.prompt_tokens
    assert listed[w.prefix_id].preview.startswith("a document to cache.")
    # pins protect against LRU eviction; an explicit Evict wins over them (by id, tenant or all)
    s.Unpin(pb.UnpinRequest(prefix_id=w.prefix_id))
    assert code_of(lambda: s.Unpin(pb.UnpinRequest(prefix_id=w.prefix_id)))[0] == \
        grpc.StatusCode.FAILED_PRECONDITION
    ev = s.Evict(pb.EvictRequest(prefix_id=w.prefix_id))
    assert ev.blocks_evicted.device > 0
    assert s.Lookup(pb.LookupRequest(prompt=prompt)).cached_tokens == 0
    assert code_of(lambda: s.Pin(pb.PinRequest(prefix_id=w.prefix_id)))[0] == \
        grpc.StatusCode.NOT_FOUND


def test_list_prefixes_pages(single):
    s = single.stub()
    for i in range(5):
        s.Warm(pb.WarmRequest(prompt=pb.Prompt(text=f"prefix number {i} " * 8)))
    seen, token = [], ""
    while True:
        r = s.ListPrefixes(pb.ListPrefixesRequest(page_size=2, page_token=token))
        assert len(r.prefixes) <= 2
        seen += [p.id for p in r.prefixes]
        token = r.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 5


def test_evict_all_frees_every_block_after_cancel_and_deadline(tiny_long_model, data_dir):
    # tiny.gguf's context (2,048 tokens) generated in less than the 80 ms deadline on a fast
    # machine; the long context keeps the generation going past it
    single = Daemon(tiny_long_model, data_dir)
    try:
        evict_all_after_cancel_and_deadline(single)
    finally:
        assert single.stop() == 0


def evict_all_after_cancel_and_deadline(single):
    s = single.stub()
    long_prompt = pb.Prompt(text="count with me: " + " ".join(str(i) for i in range(300)))
    # a deadline that passes mid-generation
    forever = pb.SamplingParams(ignore_eos=True)
    t0 = time.time()
    code, _ = code_of(lambda: generate(s, long_prompt, sampling=forever, timeout=0.08))
    assert time.time() - t0 < 5
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # a client that cancels mid-stream
    it = s.Generate(pb.GenerateRequest(prompt=long_prompt, sampling=forever), timeout=60)
    next(it)
    it.cancel()
    time.sleep(0.5)
    st = s.Stats(pb.StatsRequest())
    dev = [t for t in st.tiers if t.tier == pb.TIER_DEVICE][0]
    assert dev.blocks_used > 0  # the work done is kept as cache
    for _ in range(50):  # the engine reaps a cancelled sequence at its next step
        s.Evict(pb.EvictRequest(all=True))
        dev = [t for t in s.Stats(pb.StatsRequest()).tiers if t.tier == pb.TIER_DEVICE][0]
        if dev.blocks_used == 0:
            break
        time.sleep(0.05)
    assert dev.blocks_used == 0, "a cancelled sequence still holds blocks"
    assert st.kv_bytes_per_token > 0 and st.model


def test_concurrent_streams_all_complete(single):
    s = single.stub()
    results, errors = [], []

    def one(i):
        try:
            _, ids, f = generate(s, chat(("system", SYSTEM), ("user", f"question {i}")),
                                 max_tokens=16, sampling=pb.SamplingParams(seed=i))
            results.append(f)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(results) == 24
    assert sum(1 for f in results if f.usage.cached_tokens > 0) >= 12


def test_bad_input_gets_a_status(single):
    s = single.stub()
    bad = [
        (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(prompt=pb.Prompt(tokens=pb.TokenIds(ids=[1, 99999]))),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(prompt=pb.Prompt(text="x"),
                            sampling=pb.SamplingParams(temperature=-1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(prompt=pb.Prompt(text="x " * 5000)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(prompt=pb.Prompt(text="x"), cache=pb.CacheOptions(namespace="nope")),
         grpc.StatusCode.NOT_FOUND),
        (pb.GenerateRequest(prompt=pb.Prompt(text="x"), stop=[""]),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, want in bad:
        code, msg = code_of(lambda: list(s.Generate(req)))
        assert code == want and msg, (req, code, msg)
    assert code_of(lambda: s.Pin(pb.PinRequest(prefix_id="xyz")))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: s.Detokenize(pb.DetokenizeRequest(token_ids=[-1])))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: s.ListPrefixes(pb.ListPrefixesRequest(page_token="zz")))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: s.Evict(pb.EvictRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: s.Warm(pb.WarmRequest(prompt=pb.Prompt(text="x"),
                                                 cache=pb.CacheOptions(no_cache=True))))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: single.admin(None).ListTenants(pb.ListTenantsRequest()))[0] == \
        grpc.StatusCode.PERMISSION_DENIED
    # oversized and malformed messages, then the daemon still serves
    raw = single.channel().unary_unary("/prefixd.v1.Prefixd/Tokenize",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    assert code_of(lambda: raw(b"\x00" * (5 << 20), timeout=30))[0] == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(lambda: raw(b"\xff\xff\xff", timeout=30))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    with socket.create_connection(("127.0.0.1", single.port)) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096))
    assert s.Health(pb.HealthRequest()).status == pb.HealthResponse.STATUS_SERVING


def test_queue_limit_gives_resource_exhausted(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, extra=["--max-running", "1", "--max-queue", "1"])
    try:
        s = d.stub()
        codes = []

        def one(i):
            try:
                generate(s, pb.Prompt(text=f"request {i} " * 20), max_tokens=64)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert grpc.StatusCode.OK in codes, codes
    finally:
        assert d.stop() == 0


def request_lines(d):
    """The fields of every access-log line (msg="request") in the daemon's log."""
    import shlex
    lines = []
    for line in d.log_text().splitlines():
        if 'msg="request"' in line:
            lines.append(dict(kv.split("=", 1) for kv in shlex.split(line)))
    return lines


def test_request_log(tiny_model, data_dir):
    """One info line per finished generation and warm, over gRPC and the OpenAI API: its id (the
    x-request-id the client got), the tenant, the status (with the error when not OK), token
    counts and times, never the prompt's text; --log-requests no turns it off."""
    import http.client
    import json
    secret = "the launch code is swordfish-42"
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN, extra=["--openai-listen", "127.0.0.1:0"])
    try:
        key = d.admin(ADMIN).CreateTenant(pb.CreateTenantRequest(name="acme")).api_key
        s = d.stub(key)
        stream = s.Generate(pb.GenerateRequest(
            prompt=chat(("system", "Answer briefly."), ("user", secret)), max_tokens=6,
            sampling=pb.SamplingParams(ignore_eos=True)), timeout=120)
        assert sum(len(m.token_ids) for m in stream) == 6
        gen_id = dict(stream.initial_metadata())["x-request-id"]
        raw = pb_grpc.PrefixdStub(d.channel())
        _, warm_call = raw.Warm.with_call(pb.WarmRequest(prompt=pb.Prompt(text=secret * 4)),
                                          metadata=[("authorization", f"Bearer {key}")])
        warm_id = dict(warm_call.initial_metadata())["x-request-id"]
        with pytest.raises(grpc.RpcError) as refused:
            s.Generate(pb.GenerateRequest(prompt=pb.Prompt(text="x"), max_tokens=2,
                                          cache=pb.CacheOptions(namespace="no-such")),
                       timeout=30).next()
        bad_id = dict(refused.value.trailing_metadata())["x-request-id"]  # trailers-only
        port = int(d.log_text().split("openai_port=")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "m", "prompt": secret, "max_tokens": 3}),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 200
        oai_id = json.loads(answer.read())["id"]
        assert answer.getheader("x-request-id") == oai_id
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        streamed = conn.getresponse()
        first = json.loads(streamed.read().split(b"\n")[0][len(b"data: "):])
        assert streamed.getheader("x-request-id") == first["id"] != oai_id
        conn.close()
        deadline = time.time() + 30
        while len(request_lines(d)) < 5 and time.time() < deadline:
            time.sleep(0.05)
        gen, warm, bad, oai, _ = request_lines(d)
    finally:
        assert d.stop() == 0
    assert (gen["api"], gen["rpc"], gen["tenant"], gen["status"]) == ("grpc", "Generate", "acme",
                                                                      "OK")
    assert [x["id"] for x in (gen, warm, bad, oai)] == [gen_id, warm_id, bad_id, oai_id]
    assert len({gen_id, warm_id, bad_id}) == 3 and gen_id.startswith("req-")
    assert gen["generated_tokens"] == "6" and gen["finish"] == "length"
    assert int(gen["prompt_tokens"]) > 10 and float(gen["ttft_ms"]) >= 0
    assert int(gen["total_ms"]) >= float(gen["ttft_ms"]) - 1
    assert (warm["rpc"], warm["status"], warm["generated_tokens"]) == ("Warm", "OK", "0")
    assert int(warm["prompt_tokens"]) > 20
    assert bad["status"] == "NOT_FOUND" and "no-such" in bad["error"]
    assert (oai["api"], oai["rpc"], oai["tenant"], oai["generated_tokens"]) == (
        "openai", "completions", "acme", "3")
    assert "swordfish" not in d.log_text()  # counts, never the text
    # off (a fresh data directory: single-tenant, no keys)
    off_dir = os.path.join(data_dir, "off")
    os.mkdir(off_dir)
    d = Daemon(tiny_model, off_dir, extra=["--log-requests", "no"])
    try:
        generate(d.stub(), pb.Prompt(text="hello"), max_tokens=2)
    finally:
        assert d.stop() == 0
    assert not request_lines(d) and 'msg="prefixd ready"' in d.log_text()


def test_unix_socket(tiny_model, data_dir):
    path = os.path.join(data_dir, "prefixd.sock")
    d = Daemon(tiny_model, data_dir, unix=path)
    try:
        ch = grpc.insecure_channel(f"unix:{path}")
        from conftest import pb_grpc
        r = pb_grpc.PrefixdStub(ch).Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hi")),
                                              timeout=30)
        assert list(r.token_ids)
        ch.close()
    finally:
        assert d.stop() == 0


def test_tenants_keys_isolation_and_restart(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    try:
        assert "mode=multi-tenant" in d.log_text()
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        kb = adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
        assert ka.startswith("pfx-") and ka != kb
        assert code_of(lambda: adm.CreateTenant(pb.CreateTenantRequest(name="alpha")))[0] == \
            grpc.StatusCode.ALREADY_EXISTS
        assert code_of(lambda: adm.CreateTenant(pb.CreateTenantRequest(name="bad name")))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        a, b = d.stub(ka), d.stub(kb)
        # keys: none, wrong, a tenant's key on Admin
        assert code_of(lambda: d.stub().Stats(pb.StatsRequest()))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: d.stub("pfx-wrong").Stats(pb.StatsRequest()))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: d.admin(ka).ListTenants(pb.ListTenantsRequest()))[0] == \
            grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: d.stub(ADMIN).Warm(pb.WarmRequest(prompt=pb.Prompt(text="x"))))[0] \
            == grpc.StatusCode.PERMISSION_DENIED
        # isolation: alpha's prefix is a hit for alpha only
        prompt = pb.Prompt(text="alpha's private system prompt. " * 10)
        w = a.Warm(pb.WarmRequest(prompt=prompt))
        assert a.Lookup(pb.LookupRequest(prompt=prompt)).cached_tokens == w.prompt_tokens
        assert b.Lookup(pb.LookupRequest(prompt=prompt)).cached_tokens == 0
        _, _, fb = generate(b, prompt, max_tokens=2)
        assert fb.usage.cached_tokens == 0
        _, _, fa = generate(a, prompt, max_tokens=2)
        assert fa.usage.cached_tokens > 0
        assert code_of(lambda: b.Pin(pb.PinRequest(prefix_id=w.prefix_id)))[0] == \
            grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: b.Evict(pb.EvictRequest(prefix_id=w.prefix_id)))[0] == \
            grpc.StatusCode.NOT_FOUND
        assert all(p.tenant == "beta" for p in b.ListPrefixes(pb.ListPrefixesRequest()).prefixes)
        st_b = b.Stats(pb.StatsRequest())
        assert [t.tenant for t in st_b.tenants] == ["beta"]
        # shared namespaces: granted, then usable by both
        assert code_of(lambda: a.Warm(pb.WarmRequest(prompt=prompt,
                                                     cache=pb.CacheOptions(namespace="team"))))[0] \
            == grpc.StatusCode.NOT_FOUND
        adm.GrantNamespace(pb.GrantNamespaceRequest(tenant="alpha", namespace="team"))
        adm.GrantNamespace(pb.GrantNamespaceRequest(tenant="beta", namespace="team"))
        a.Warm(pb.WarmRequest(prompt=prompt, cache=pb.CacheOptions(namespace="team")))
        assert b.Lookup(pb.LookupRequest(prompt=prompt, namespace="team")).cached_tokens > 0
        adm.RevokeNamespace(pb.RevokeNamespaceRequest(tenant="beta", namespace="team"))
        assert code_of(lambda: b.Lookup(pb.LookupRequest(prompt=prompt, namespace="team")))[0] \
            == grpc.StatusCode.PERMISSION_DENIED
        # limits and key rotation
        adm.SetLimits(pb.SetLimitsRequest(name="beta", limits=pb.TenantLimits(
            max_context_tokens=32)))
        assert code_of(lambda: generate(b, pb.Prompt(text="word " * 40), max_tokens=1))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        kb2 = adm.RotateKey(pb.RotateKeyRequest(name="beta")).api_key
        assert code_of(lambda: b.Stats(pb.StatsRequest()))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert d.stub(kb2).Stats(pb.StatsRequest()).requests >= 0
        names = [t.name for t in adm.ListTenants(pb.ListTenantsRequest()).tenants]
        assert names == ["alpha", "beta"]
    finally:
        assert d.stop() == 0
    # the registry file keeps digests, never keys
    reg = open(os.path.join(data_dir, "tenants")).read()
    assert ka not in reg and kb2 not in reg and "alpha" in reg
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    try:
        assert "tenants=2" in d.log_text()
        assert d.stub(ka).Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hi"))).token_ids
        assert code_of(lambda: d.stub(kb).Stats(pb.StatsRequest()))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        tb = [t for t in d.admin(ADMIN).ListTenants(pb.ListTenantsRequest()).tenants
              if t.name == "beta"][0]
        assert tb.limits.max_context_tokens == 32
        d.admin(ADMIN).DeleteTenant(pb.DeleteTenantRequest(name="alpha"))
        assert code_of(lambda: d.stub(ka).Stats(pb.StatsRequest()))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert d.stop() == 0


def test_sigterm_drains_running_stream(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, extra=["--drain-timeout", "300"])  # ASan on a busy machine
    s = d.stub()
    got = {}

    def run():
        try:
            got["r"] = generate(s, pb.Prompt(text="long story " * 10), max_tokens=400,
                                sampling=pb.SamplingParams(temperature=1.0, seed=3),
                                stop_tokens=[0, 1, 2])
        except grpc.RpcError as e:
            got["e"] = e
    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    d.proc.send_signal(signal.SIGTERM)
    t.join(300)
    assert d.proc.wait(300) == 0
    assert "r" in got, got.get("e")
    assert 'msg="draining"' in d.log_text()
