"""The synchronous client against a live prefixd on a synthetic model: generation streams,
cache reuse, tokens, the explicit-cache API (warm, lookup, prefixes, evict, pin), stats, health
and the Unix-socket transport."""
from __future__ import annotations

import json
import re
import time
from typing import Literal

import pytest

import prefixd
from prefixd import FinishReason, HealthStatus, Message, Tier

SYSTEM = "You are a terse assistant who answers in one word. " * 6
DOC = "a document to cache. " * 20


def chat_messages(question: str):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_health_and_stats_of_a_fresh_daemon(client: prefixd.Client):
    assert client.health() is HealthStatus.SERVING
    st = client.stats()
    assert st.backend == "cpu"
    assert st.model.startswith("llama:"), st.model
    assert st.kv_bytes_per_token > 0
    dev = st.tier(Tier.DEVICE)
    assert dev is not None and dev.blocks_capacity > 0 and dev.blocks_used == 0
    assert not dev.disabled
    assert [t.tenant for t in st.tenants] == ["default"]
    assert st.requests == 0 and st.hit_tokens == 0 and st.hit_rate == 0.0


def test_generate_streams_chunks_then_a_final_usage(client: prefixd.Client):
    msgs = chat_messages("first question")
    n_prompt = len(client.tokenize(messages=msgs, add_generation_prompt=True))
    stream = client.generate(messages=msgs, max_tokens=10, ignore_eos=True)
    chunks = list(stream)
    assert len(chunks) >= 2
    *body, final = chunks
    assert all(c.finish_reason is None and c.usage is None for c in body)
    assert sum(len(c.token_ids) for c in body) == 10
    assert final.is_final and final.finish_reason is FinishReason.LENGTH
    assert final.finish_reason == "length"  # the enums are strings too
    assert final.token_ids == [] and final.text == ""
    u = final.usage
    assert u is not None and final.timings is not None
    assert u.prompt_tokens == n_prompt
    assert u.cached_tokens == 0 and u.computed_tokens == n_prompt
    assert u.cached_tokens_by_tier == prefixd.TierCounts()
    assert u.generated_tokens == 10
    assert final.timings.ttft_ms >= final.timings.queue_ms >= 0
    # the stream object kept everything
    assert stream.final is final and stream.usage == u
    assert stream.token_ids == [i for c in body for i in c.token_ids]
    assert stream.text == "".join(c.text for c in body)
    assert stream.text == client.detokenize(stream.token_ids)
    # iterating a finished stream yields nothing more
    assert list(stream) == []


def test_second_request_over_the_same_prompt_reports_cached_tokens(client: prefixd.Client):
    n_sys = len(client.tokenize(messages=[{"role": "system", "content": SYSTEM}]))
    assert n_sys > 64
    first = client.chat(chat_messages("first question"), max_tokens=4)
    assert first.usage.cached_tokens == 0
    second = client.chat(chat_messages("second question"), max_tokens=4)
    u = second.usage
    # the whole system turn but possibly its last partial block
    assert n_sys - 16 <= u.cached_tokens < u.prompt_tokens, (u, n_sys)
    assert u.cached_tokens_by_tier.device == u.cached_tokens
    assert u.cached_tokens_by_tier.total == u.cached_tokens
    # the very same prompt again: everything but the last token comes from the cache
    third = client.chat(chat_messages("second question"), max_tokens=4)
    assert third.usage.cached_tokens == third.usage.prompt_tokens - 1, third.usage


def test_chat_returns_the_whole_reply(client: prefixd.Client):
    reply = client.chat([Message("system", SYSTEM), ("user", "say something")], max_tokens=6,
                        temperature=0.9, seed=11, ignore_eos=True)
    assert isinstance(reply, prefixd.ChatCompletion)
    assert reply.finish_reason is FinishReason.LENGTH
    assert len(reply.token_ids) == reply.usage.generated_tokens == 6
    assert reply.text == client.detokenize(reply.token_ids)
    assert reply.message == Message("assistant", reply.text)
    # same seed, same prompt: the same tokens, cached or not
    again = client.chat([Message("system", SYSTEM), ("user", "say something")], max_tokens=6,
                        temperature=0.9, seed=11, ignore_eos=True)
    assert again.usage.cached_tokens > 0
    assert again.token_ids == reply.token_ids
    # and the multi-turn follow-up reuses the first turn
    turn2 = client.chat([Message("system", SYSTEM), ("user", "say something"), reply.message,
                         ("user", "and then?")], max_tokens=2)
    assert turn2.usage.cached_tokens >= reply.usage.prompt_tokens - 16


def test_logprobs_per_token_with_alternatives(client: prefixd.Client):
    kw = dict(max_tokens=5, temperature=5.0, seed=3, ignore_eos=True)
    reply = client.chat(chat_messages("hello"), top_logprobs=4, **kw)
    assert len(reply.logprobs) == len(reply.token_ids) == 5
    for tok, lp in zip(reply.token_ids, reply.logprobs):
        assert isinstance(lp, prefixd.TokenLogprob) and lp.token_id == tok and lp.logprob <= 0
        assert len(lp.top) == 4 and [v for _, v in lp.top] == sorted((v for _, v in lp.top),
                                                                     reverse=True)
    stream = client.generate(messages=chat_messages("hello"), logprobs=True, **kw)
    chunks = list(stream)
    assert stream.token_ids == reply.token_ids  # asking for logprobs changes no token
    assert [lp.logprob for lp in stream.logprobs] == [lp.logprob for lp in reply.logprobs]
    assert all(lp.top == [] for lp in stream.logprobs)
    assert sum(len(c.logprobs) for c in chunks) == 5
    assert client.chat(chat_messages("hello"), **kw).logprobs == []


def test_logit_bias_and_penalties_steer_the_tokens(client: prefixd.Client):
    kw = dict(max_tokens=24, ignore_eos=True)
    greedy = client.chat(chat_messages("hello"), **kw).token_ids
    banned = greedy[0]
    steered = client.chat(chat_messages("hello"), logit_bias={banned: -100}, **kw).token_ids
    assert banned not in steered and len(steered) == 24
    forced = client.chat(chat_messages("hello"), logit_bias={7: 100.0}, **kw).token_ids
    assert forced == [7] * 24
    # the synthetic model repeats itself when greedy; OpenAI's penalties spread the picks
    spread = client.chat(chat_messages("hello"), frequency_penalty=2.0, presence_penalty=2.0,
                         **kw).token_ids
    assert len(set(spread)) > len(set(greedy)), (greedy, spread)
    with pytest.raises(prefixd.InvalidArgument, match="presence_penalty"):
        client.chat(chat_messages("hello"), presence_penalty=3.0, **kw)
    with pytest.raises(prefixd.InvalidArgument, match="vocabulary"):
        client.chat(chat_messages("hello"), logit_bias={10 ** 7: 1.0}, **kw)


def test_json_object_response_format(client: prefixd.Client):
    close = client.tokenize("}")[0]
    reply = client.chat(chat_messages("JSON please"), max_tokens=60, response_format="json_object",
                        logit_bias={close: 100.0})
    assert reply.finish_reason is FinishReason.STOP and reply.text.strip() == "{}"
    with pytest.raises(ValueError, match="json_object"):
        client.chat(chat_messages("x"), response_format="yaml")
    # a schema: the key and the enum's letters are forced; a bias on "l" picks the value (200
    # tokens leave room for the whitespace runs the grammar allows between them)
    schema = {"type": "object", "properties": {"size": {"enum": ["small", "large"]}},
              "required": ["size"]}
    reply = client.chat(chat_messages("size?"), max_tokens=200, response_format=schema,
                        logit_bias={client.tokenize("l")[0]: 100.0})
    assert reply.finish_reason is FinishReason.STOP and json.loads(reply.text) == {"size": "large"}
    # a pydantic model class stands for its schema
    pydantic = pytest.importorskip("pydantic")

    class Size(pydantic.BaseModel):
        size: Literal["small", "large"]

    reply = client.chat(chat_messages("size?"), max_tokens=200, response_format=Size,
                        logit_bias={client.tokenize("l")[0]: 100.0})
    assert Size.model_validate_json(reply.text).size == "large"
    with pytest.raises(prefixd.InvalidArgument, match="'multipleOf' is not supported"):
        client.chat(chat_messages("x"), response_format={"type": "integer", "multipleOf": 2})


def test_stop_string_ends_the_generation(client: prefixd.Client):
    # a hot temperature: the synthetic model's greedy text is a single repeated token
    kw = dict(max_tokens=24, temperature=5.0, seed=5, ignore_eos=True)
    text = client.chat(chat_messages("tell a story"), **kw).text
    # a two-character ASCII stop string that first occurs well inside the reply
    start = next((i for i in range(3, len(text) - 2)
                  if text[i:i + 2].isascii() and text[i:i + 2].isprintable()
                  and text.find(text[i:i + 2]) == i), None)
    assert start is not None, f"no usable stop string in {text!r}"
    stop = text[start:start + 2]
    cut = client.chat(chat_messages("tell a story"), stop=[stop, "never appears"], **kw)
    assert cut.finish_reason is FinishReason.STOP, (text, stop, cut)
    assert cut.text == text[:start], (text, stop, cut.text)


def test_tokenize_detokenize_round_trip(client: prefixd.Client):
    ids = client.tokenize("hello world")
    assert ids and all(isinstance(i, int) for i in ids)
    assert client.detokenize(ids) == "hello world"
    chat_ids = client.tokenize(messages=[("user", "hi")])
    assert client.detokenize(chat_ids, render_special=True) == "<|im_start|>user\nhi<|im_end|>\n"
    assert client.detokenize(chat_ids) == "user\nhi\n"
    gen_ids = client.tokenize([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert gen_ids[:len(chat_ids)] == chat_ids and len(gen_ids) > len(chat_ids)
    assert client.detokenize(gen_ids, render_special=True).endswith("<|im_start|>assistant\n")
    # token ids come back unchanged
    assert client.tokenize([5, 6, 7]) == [5, 6, 7]


def test_warm_then_lookup(client: prefixd.Client):
    cold = client.lookup(DOC)
    assert cold.prompt_tokens > 0 and cold.cached_tokens == 0
    w = client.warm(DOC)
    assert w.prompt_tokens == cold.prompt_tokens
    assert w.computed_tokens == w.prompt_tokens and w.cached_tokens == 0
    assert re.fullmatch(r"[0-9a-f]{32}", w.prefix_id), w.prefix_id
    w2 = client.warm(DOC)
    assert (w2.cached_tokens, w2.computed_tokens, w2.prefix_id) == \
        (w.prompt_tokens, 0, w.prefix_id)
    hit = client.lookup(DOC)
    assert hit.cached_tokens == hit.prompt_tokens == w.prompt_tokens
    assert hit.cached_tokens_by_tier == prefixd.TierCounts(device=w.prompt_tokens)
    # token ids that extend the warmed prompt are cached exactly as far as it goes
    ids = client.tokenize(DOC) + client.tokenize("and then some more words")
    longer = client.lookup(ids)
    assert (longer.prompt_tokens, longer.cached_tokens) == (len(ids), w.prompt_tokens)
    # a generation over the warmed prompt reuses it
    _, final = _drain(client.generate(ids, max_tokens=2))
    assert final.usage.cached_tokens == w.prompt_tokens


def _drain(stream: prefixd.GenerateStream):
    chunks = list(stream)
    return chunks, chunks[-1]


def test_prefixes_listing_over_pages(client: prefixd.Client):
    warmed = {}
    for i in range(5):
        text = f"prefix number {i} " * 8
        warmed[client.warm(text).prefix_id] = text
    listed = list(client.prefixes(page_size=2))
    ids = [p.id for p in listed]
    assert len(ids) == len(set(ids)) >= 5
    by_id = {p.id: p for p in listed}
    for pid, text in warmed.items():
        p = by_id[pid]
        assert p.tenant == "default" and p.namespace == ""
        assert p.token_count == len(client.tokenize(text))
        assert p.blocks.device == (p.token_count + 15) // 16
        assert not p.pinned and p.pin_expires_unix_ms == 0
        assert p.preview and text.startswith(p.preview[:40]), p.preview
        assert abs(p.last_use_unix_ms - time.time() * 1000) < 60_000
    # one page holding everything gives the same set; a parent is always a listed prefix
    assert {p.id for p in client.prefixes(page_size=1000)} == set(ids)
    assert all(p.parent_id == "" or p.parent_id in by_id for p in listed)


def test_evict_then_lookup_shows_zero(client: prefixd.Client):
    other_text = "zebras keep this other prompt cached " * 6  # shares no token with DOC
    w = client.warm(DOC)
    other = client.warm(other_text)
    evicted = client.evict(w.prefix_id)
    assert evicted.device == (w.prompt_tokens + 15) // 16, evicted
    assert evicted.host == evicted.disk == 0
    assert client.lookup(DOC).cached_tokens == 0
    assert w.prefix_id not in {p.id for p in client.prefixes()}
    # the other prefix is untouched
    assert client.lookup(other_text).cached_tokens == other.prompt_tokens
    with pytest.raises(prefixd.NotFound):
        client.evict(w)
    # evict everything of this tenant from the device tier: it moves one tier colder (host RAM)
    everything = client.evict(all=True, tier="device")
    assert everything == prefixd.TierCounts(device=(other.prompt_tokens + 15) // 16)
    lk = client.lookup(other_text)
    assert lk.cached_tokens_by_tier.device == 0
    assert lk.cached_tokens_by_tier.host == lk.cached_tokens == other.prompt_tokens
    # evicting from every tier leaves nothing
    assert client.evict(all=True).host == (other.prompt_tokens + 15) // 16
    assert client.lookup(other_text).cached_tokens == 0
    assert client.stats().tier(Tier.DEVICE).blocks_used == 0
    assert list(client.prefixes()) == []


def test_pin_and_unpin(client: prefixd.Client):
    w = client.warm(DOC)
    client.pin(w.prefix_id)
    p = next(p for p in client.prefixes() if p.id == w.prefix_id)
    assert p.pinned and p.pin_expires_unix_ms == 0
    # pins are counted: a second pin needs a second unpin
    client.pin(w, ttl=3600)
    client.unpin(w)
    assert next(p for p in client.prefixes() if p.id == w.prefix_id).pinned
    client.unpin(w.prefix_id)
    assert not next(p for p in client.prefixes() if p.id == w.prefix_id).pinned
    with pytest.raises(prefixd.FailedPrecondition) as e:
        client.unpin(w.prefix_id)
    assert w.prefix_id in e.value.message
    # a pin with a TTL, through Warm and through Pin
    client.evict(all=True)
    w = client.warm(DOC, pin_ttl=120)
    p = next(p for p in client.prefixes() if p.id == w.prefix_id)
    now_ms = time.time() * 1000
    assert p.pinned and now_ms + 100_000 < p.pin_expires_unix_ms < now_ms + 130_000
    client.pin(w, ttl=3600)
    p = next(p for p in client.prefixes() if p.id == w.prefix_id)
    assert now_ms + 3_500_000 < p.pin_expires_unix_ms < now_ms + 3_700_000
    # and through Generate
    _, final = _drain(client.generate("pinned by generate " * 8, max_tokens=1, pin_ttl=60))
    assert final.usage.prompt_tokens > 0
    pinned = [p for p in client.prefixes()
              if p.pinned and p.preview.startswith("pinned by generate") and p.pin_expires_unix_ms]
    # the prompt's full blocks are pinned, not the block that also holds the generated token
    assert [p.token_count for p in pinned] == [final.usage.prompt_tokens // 16 * 16]


def test_pinned_prefix_survives_lru_eviction(tiny_model, data_dir):
    from conftest import Daemon
    # 256 device blocks of 16 tokens, and no colder tier to spill to: LRU eviction drops
    d = Daemon(tiny_model, data_dir,
               extra=["--kv-cache-mb", "1", "--host-cache-mb", "0", "--disk-cache-mb", "0"])
    try:
        c = d.client()
        capacity = c.stats().tier(Tier.DEVICE).blocks_capacity
        pinned = c.warm(DOC, pin_ttl=600)
        loose = c.warm("zebras are not pinned at all " * 12)
        assert c.lookup(DOC).cached_tokens == pinned.prompt_tokens
        filled = 0
        i = 0
        while filled < 2 * capacity:  # twice the cache: LRU eviction must run
            filled += (c.warm(f"{i} filler text to push the cache " * 10).prompt_tokens + 15) // 16
            i += 1
        assert c.lookup(DOC).cached_tokens == pinned.prompt_tokens
        assert c.lookup("zebras are not pinned at all " * 12).cached_tokens < loose.prompt_tokens
        assert c.stats().tier(Tier.DEVICE).blocks_used <= capacity
        # once unpinned it goes like any other block
        c.unpin(pinned)
        for j in range(i, 2 * i):
            c.warm(f"{j} filler text to push the cache " * 10)
        assert c.lookup(DOC).cached_tokens < pinned.prompt_tokens
    finally:
        assert d.stop() == 0


def test_no_cache_neither_reads_nor_writes(client: prefixd.Client):
    prompt = "the quick brown fox " * 10
    client.warm(prompt)
    _, final = _drain(client.generate(prompt, max_tokens=2, no_cache=True))
    assert final.usage.cached_tokens == 0
    client.evict(all=True)
    _drain(client.generate(prompt, max_tokens=2, no_cache=True))
    assert client.lookup(prompt).cached_tokens == 0


def test_stats_count_requests_and_hits(client: prefixd.Client):
    client.chat(chat_messages("one"), max_tokens=2)
    client.chat(chat_messages("two"), max_tokens=2)
    st = client.stats()
    assert st.requests >= 2
    assert 0 < st.hit_tokens < st.query_tokens
    assert 0.0 < st.hit_rate < 1.0
    (tenant,) = st.tenants
    assert tenant.tenant == "default" and tenant.requests >= 2 and tenant.hit_tokens > 0
    assert tenant.blocks.device == st.tier("device").blocks_used > 0


def test_cancel_a_stream(client: prefixd.Client):
    long_prompt = "count with me: " + " ".join(str(i) for i in range(200))
    stream = client.generate(long_prompt, ignore_eos=True)
    first = next(stream)
    assert first.token_ids
    stream.cancel()
    with pytest.raises(prefixd.Cancelled):
        for _ in stream:
            pass
    # leaving a with block early cancels too; the daemon keeps serving
    with client.generate(long_prompt, ignore_eos=True) as s:
        next(s)
    assert client.health() is HealthStatus.SERVING
    # the work done is kept as cache
    assert client.lookup(long_prompt).cached_tokens > 0


def test_unix_socket_target(daemon):
    for target in (f"unix:{daemon.unix}", daemon.unix):
        c = daemon.client(target=target)
        assert c.target == f"unix:{daemon.unix}"
        assert c.health() is HealthStatus.SERVING
        assert c.detokenize(c.tokenize("over a unix socket")) == "over a unix socket"
        reply = c.chat([("user", "hello")], max_tokens=3, ignore_eos=True)
        assert reply.usage.generated_tokens == 3


def test_client_context_manager_and_env_defaults(daemon, monkeypatch):
    monkeypatch.setenv("PREFIXD_ADDR", daemon.target)
    with prefixd.Client() as c:
        assert c.target == daemon.target
        assert c.health() is HealthStatus.SERVING
    with pytest.raises(ValueError):
        c.health()  # closed channel


def test_bad_arguments_are_caught_before_sending(client: prefixd.Client):
    with pytest.raises(TypeError):
        client.generate()
    with pytest.raises(TypeError):
        client.generate("text", messages=[("user", "hi")])
    with pytest.raises(TypeError):
        client.evict()
    with pytest.raises(TypeError):
        client.evict("0" * 32, all=True)
    with pytest.raises(TypeError):
        client.tokenize([{"content": "no role"}, 1])


def test_request_ids_match_the_access_log(daemon: Daemon):
    """Each generation's request_id (the daemon's x-request-id) names its access-log line; a
    failed one's error carries it too."""
    c = daemon.client()
    reply = c.chat([{"role": "user", "content": "hi"}], max_tokens=3, ignore_eos=True)
    stream = c.generate("once upon a time", max_tokens=2, ignore_eos=True)
    chunks = list(stream)
    with pytest.raises(prefixd.errors.NotFound) as failed:
        c.chat([{"role": "user", "content": "x"}], max_tokens=2, namespace="no-such-namespace")
    ids = [reply.request_id, stream.request_id, failed.value.request_id]
    assert chunks and all(i.startswith("req-") for i in ids) and len(set(ids)) == 3, ids
    deadline = time.time() + 30
    while not all(f"id={i} " in daemon.log_text() for i in ids) and time.time() < deadline:
        time.sleep(0.05)
    for i, status in zip(ids, ("OK", "OK", "NOT_FOUND")):
        line = next(x for x in daemon.log_text().splitlines() if f"id={i} " in x)
        assert f"status={status}" in line, line
