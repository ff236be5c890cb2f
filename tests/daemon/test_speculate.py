"""Speculative decoding by prompt lookup (--speculate) end to end: a real prefixd with drafts
against one without, on the same requests.

A draft only decides how many of the sampler's draws one forward pass serves; the draws are the
ones decoding a token at a time makes. The CPU kernels are batch-invariant, so every request
must give exactly the tokens, text, finish reason and log-probabilities it gives with
--speculate 0: greedy, seeded sampling with penalties, JSON output, stop strings and stop tokens,
alone and in a concurrent batch, and while sequences are preempted. A draft row whose KV was kept
though its token was not sampled, a sampler or JSON state that saw a token twice, or a logprob
taken from the wrong row would differ within a few tokens.

The synthetic models have random weights, and greedy decoding on them soon falls into loops, so
drafts from the sequence's own output are accepted often: the counters must show it.
"""
import os
import random
import subprocess

import pytest

from conftest import Daemon, pb
from test_metrics import metrics_port, q51_model, scrape, val  # noqa: F401 (a fixture)
from test_preemption import concurrently, run, small_cache


def prompt_ids(i):
    """A prompt whose phrases repeat (a document quoted twice, a list with a pattern)."""
    rng = random.Random(i)
    phrase = [rng.randrange(5, 500) for _ in range(6 + i % 5)]
    filler = [rng.randrange(5, 500) for _ in range(5)]
    return phrase + filler + phrase + filler[:2] + phrase[:3]


def request(i, max_tokens=96, closers=()):
    """closers: token ids JSON requests favour (a closing brace, a quote), so that their objects
    close -- on a draft's row too."""
    kw = dict(prompt=pb.Prompt(tokens=pb.TokenIds(ids=prompt_ids(i))), max_tokens=max_tokens)
    kind = i % 5
    if kind == 0:
        kw["sampling"] = pb.SamplingParams(ignore_eos=True)
        kw["top_logprobs"] = 3
    elif kind == 1:
        kw["sampling"] = pb.SamplingParams(temperature=0.8, top_k=40, seed=77 + i,
                                           repeat_penalty=1.1, ignore_eos=True)
        kw["logprobs"] = True
    elif kind == 2:
        kw["response_format"] = pb.ResponseFormat(
            type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_OBJECT)
        if closers and i % 10 != 2:  # as test_openai's: short values, no whitespace
            kw["sampling"] = pb.SamplingParams(temperature=5.0, seed=i, logit_bias=[
                pb.LogitBias(token_id=t, bias=b) for t, b in zip(closers, (15, 20, 10, -100,
                                                                           -100))])
    elif kind == 3:  # a stop token the loop will reach
        kw["sampling"] = pb.SamplingParams(ignore_eos=True)
        kw["stop_tokens"] = [prompt_ids(i)[1]]
    else:
        kw["sampling"] = pb.SamplingParams(temperature=1.2, min_p=0.05, seed=5 + i,
                                           presence_penalty=0.3, ignore_eos=True)
        kw["stop"] = ["ab"]
    return kw


SOURCES = ("text", "cache", "grammar")


def spec_counts(d):
    """The counters from /metrics, checked against Stats."""
    samples, _ = scrape(metrics_port(d))
    by = {name: [val(samples, f"prefixd_spec_{name}_tokens_total", source=src)
                 for src in SOURCES] for name in ("draft", "accepted")}
    counts = (sum(by["draft"]), sum(by["accepted"]),
              val(samples, "prefixd_generated_tokens_total"))
    st = d.stub().Stats(pb.StatsRequest())
    assert (st.spec_draft_tokens, st.spec_accepted_tokens, st.generated_tokens) == counts
    assert st.spec_cache_accepted_tokens == by["accepted"][1]
    return counts + (by["accepted"][1],)


def closers(model, data_dir):
    d = Daemon(model, data_dir)
    try:
        s = d.stub()
        return [s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=t))).token_ids[0]
                for t in ("}", '"', "1", "\n", " ")]
    finally:
        d.stop()


def start(model, data_dir, extra, always):
    """A daemon; always: every draft found is verified (PREFIXD_SPECULATE_ALWAYS), so that what
    is drafted does not depend on this machine's timing, as the cost model's choice does."""
    return Daemon(model, data_dir, extra=extra,
                  env={"PREFIXD_SPECULATE_ALWAYS": "1" if always else "0"})


def outputs(model, data_dir, speculate, kws, extra=(), always=False):
    """Each request alone, then all at once (no cache: each computes its prompt), and the
    speculation counters."""
    d = start(model, data_dir, ["--speculate", str(speculate), "--metrics-listen", "127.0.0.1:0",
                                *extra], always)
    try:
        s = d.stub()
        alone = [run(s, kw)[0] for kw in kws]
        together = [r[0] for r in concurrently(s, kws)]
        return alone, together, spec_counts(d)
    finally:
        d.stop()


@pytest.mark.parametrize("model,always", [("tiny", True), ("q51", True), ("q51", False)])
def test_speculation_gives_the_tokens_of_plain_decoding(model, always, tiny_model, q51_model,
                                                        data_dir):
    """always: every draft is verified, so the run is the same whatever the machine's timing
    (the cost model's choice depends on it); otherwise the cost model chooses."""
    path = tiny_model if model == "tiny" else q51_model
    kws = [request(i, max_tokens=64, closers=closers(path, data_dir)) for i in range(20)]
    for kw in kws:
        kw["cache"] = pb.CacheOptions(no_cache=True)
    off_alone, off_together, off_counts = outputs(path, data_dir, 0, kws)
    on_alone, on_together, on_counts = outputs(path, data_dir, 8, kws, always=always)
    closed = [a for kw, a in zip(kws, off_alone) if "response_format" in kw and
              a[2] == pb.FINISH_REASON_STOP]
    if model == "tiny":  # (tiny-q5_1's objects do not close within max_tokens)
        assert closed, "no JSON object closed: a draft row closing one is not tested"
    assert off_counts[0] == 0 and off_counts[1] == 0
    for i, kw in enumerate(kws):
        assert on_alone[i] == off_alone[i], f"request {i} alone"
        assert on_together[i] == off_alone[i], f"request {i} in a batch"
    assert off_together == off_alone
    drafted, accepted, generated, _ = on_counts
    assert generated == off_counts[2]
    if always:  # (the cost model's drafts depend on the timing: equal tokens is what it owes)
        # the loops were drafted and many of their tokens came without a pass of their own
        assert accepted > 0.2 * generated, on_counts
        assert drafted > accepted  # and some drafts were rejected


def test_speculation_under_preemption(q51_model, data_dir):
    """A cache too small for the batch: sequences are preempted and resume from the prefix cache
    while they speculate; the output is still exactly that of plain decoding, run alone."""
    kws = [request(i, max_tokens=128) for i in range(12)]
    d = Daemon(q51_model, data_dir, extra=small_cache(["--speculate", "0"]))
    try:
        alone = [run(d.stub(), kw)[0] for kw in kws]
    finally:
        d.stop()
    d = start(q51_model, data_dir, small_cache(["--speculate", "6"]), always=True)
    try:
        s = d.stub()
        # the requests overlap enough to preempt only if they arrive together: on a loaded
        # machine the first may finish before the last is sent, so up to three rounds
        for _ in range(3):
            s.Evict(pb.EvictRequest(all=True))
            together = [r[0] for r in concurrently(s, kws)]
            for i in range(len(kws)):
                assert together[i] == alone[i], f"request {i}"
            samples, _ = scrape(metrics_port(d))
            if val(samples, "prefixd_preemptions_total") > 0:
                break
        assert val(samples, "prefixd_preemptions_total") > 0
        assert sum(val(samples, "prefixd_spec_accepted_tokens_total", source=src)
                   for src in SOURCES) > 0
    finally:
        d.stop()


def test_an_answer_given_before_is_drafted_from_the_cache(q51_model, data_dir):
    """The same requests twice with the prefix cache on: the first answers are published into the
    tree at their end, so the second time each context's continuation is there and drafts from
    the cache carry most of the answer -- for seeded sampling too, whose same seed gives the
    same tokens. A third request with another seed diverges: its drafts are rejected where it
    does, and its tokens are still its own (those of --speculate 0). Every draft is verified:
    how many the cost model would take depends on the timing."""
    kws = [request(i, max_tokens=64) for i in (0, 1, 3)]
    other = dict(kws[1], sampling=pb.SamplingParams(temperature=0.8, top_k=40, seed=999,
                                                    ignore_eos=True))
    d = Daemon(q51_model, data_dir, extra=["--speculate", "0"])
    try:
        plain = [run(d.stub(), kw)[0] for kw in kws + [other]]
    finally:
        d.stop()
    d = start(q51_model, data_dir, ["--speculate", "8", "--metrics-listen", "127.0.0.1:0",
                                    "--disk-cache-mb", "0"], always=True)
    try:
        s = d.stub()
        first = [run(s, kw)[0] for kw in kws]
        _, _, gen0, cache0 = spec_counts(d)
        again = [run(s, kw)[0] for kw in kws]
        _, _, gen1, cache1 = spec_counts(d)
        diverging = run(s, other)[0]
    finally:
        d.stop()
    assert first == plain[:3] and again == plain[:3] and diverging == plain[3]
    assert cache0 == 0  # nothing had been generated before
    assert cache1 - cache0 > 0.5 * (gen1 - gen0), (cache1 - cache0, gen1 - gen0)


SCHEMA = ('{"type": "object", "properties": {"kind": {"enum": ["alpha", "beta"]}, '
          '"when": {"type": "string", "format": "date-time"}, "done": {"type": "boolean"}, '
          '"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"}}, '
          '"required": ["kind", "when", "done", "code"]}')


def test_the_grammar_drafts_what_it_forces(tiny_model, data_dir):
    """json_schema requests, sampled (seeded), whose strings have a format and a pattern: what
    the schema forces next (property names in its order, the rest of an enum value or of
    true/false) is drafted from the grammar, and the answers are exactly those of --speculate 0,
    alone and batched."""
    ids = closers(tiny_model, data_dir)
    kws = [dict(prompt=pb.Prompt(tokens=pb.TokenIds(ids=prompt_ids(i))), max_tokens=300,
                response_format=pb.ResponseFormat(
                    type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_SCHEMA, json_schema=SCHEMA),
                sampling=pb.SamplingParams(temperature=5.0, seed=i,
                                           logit_bias=[pb.LogitBias(token_id=t, bias=b) for t, b
                                                       in zip(ids, (15, 20, 10, -100, -100))]),
                cache=pb.CacheOptions(no_cache=True))
           for i in range(8)]
    off_alone, _, _ = outputs(tiny_model, data_dir, 0, kws)
    on_alone, on_together, _ = outputs(tiny_model, data_dir, 8, kws, always=True)
    assert on_alone == off_alone and on_together == off_alone
    assert sum(a[2] == pb.FINISH_REASON_STOP for a in off_alone) >= 4  # documents closed
    d = start(tiny_model, data_dir, ["--metrics-listen", "127.0.0.1:0"], always=True)
    try:
        run(d.stub(), kws[0])
        samples, _ = scrape(metrics_port(d))
        drafted = val(samples, "prefixd_spec_draft_tokens_total", source="grammar")
        accepted = val(samples, "prefixd_spec_accepted_tokens_total", source="grammar")
    finally:
        d.stop()
    assert drafted > 0 and accepted > 0.5 * drafted, (drafted, accepted)


@pytest.mark.parametrize("flag,value", [("--speculate", "17"), ("--speculate", "-1"),
                                        ("--speculate", "x"), ("env", "99")])
def test_bad_speculate_values_are_refused(tiny_model, data_dir, flag, value):
    env = dict(os.environ)
    args = [os.environ["PREFIXD_BIN"], "--model", tiny_model, "--listen", "127.0.0.1:0",
            "--data-dir", data_dir]
    if flag == "env":
        env["PREFIXD_SPECULATE"] = value
    else:
        args += [flag, value]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and value in lines[0] and "[0, 16]" in lines[0], p.stderr
