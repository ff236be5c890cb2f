"""Incremental KV admission and preemption end to end: a real prefixd whose device tier (64
blocks of the synthetic tiny-q5_1: 16 KiB each, --kv-cache-mb 1) cannot hold what a dozen
concurrent requests will reach.

With --kv-admission incremental (the default) a request starts once the cache holds its prompt
and a block more; when a decoding sequence needs a block and none is left, the latest arrival
is preempted: its full blocks go into the prefix cache, it waits at the head of the queue and
resumes from them. The CPU kernels are bit-exact whatever the batch or the cache did, so every
preempted request must give exactly the tokens, text, finish reason and log-probabilities it
gives alone: a resumed sequence that lost a token, recomputed a block from the wrong tokens or
sampled with a reset sampler or JSON state would differ within a few tokens.
"""
import concurrent.futures
import random
import signal
import threading
import time

import grpc
import pytest

from conftest import Daemon, generate, pb
from test_metrics import metrics_port, q51_model, scrape, val  # noqa: F401 (a fixture)

SHARED = [random.Random(99).randrange(5, 500) for _ in range(32)]


def request(i, max_tokens=128):
    """The i-th request of the load: greedy, seeded sampling with log-probabilities, or JSON;
    every other prompt begins with the same two blocks (shared, hot blocks in the accounting)."""
    rng = random.Random(i)
    tail = [10 + i] + [rng.randrange(5, 500) for _ in range(7 + i % 16)]
    ids = SHARED + tail if i % 2 == 0 else tail + [rng.randrange(5, 500) for _ in range(32)]
    kw = dict(prompt=pb.Prompt(tokens=pb.TokenIds(ids=ids)), max_tokens=max_tokens)
    if i % 3 == 0:
        kw["sampling"] = pb.SamplingParams(ignore_eos=True)
    elif i % 3 == 1:
        kw["sampling"] = pb.SamplingParams(temperature=0.9, top_p=0.95, seed=1000 + i,
                                           ignore_eos=True)
        kw["top_logprobs"] = 2
    else:
        kw["response_format"] = pb.ResponseFormat(
            type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_OBJECT)
    return kw


def run(stub, kw):
    """(text, ids, finish reason, log-probabilities, final message) of one streamed Generate."""
    text, ids, lps, final = "", [], [], None
    for m in stub.Generate(pb.GenerateRequest(**kw), timeout=300):
        text += m.text
        ids += list(m.token_ids)
        lps += [(lp.logprob, tuple(lp.top_ids), tuple(lp.top_logprobs)) for lp in m.logprobs]
        if m.finish_reason:
            final = m
    assert final is not None
    return (text, ids, final.finish_reason, lps), final


def concurrently(stub, kws):
    with concurrent.futures.ThreadPoolExecutor(len(kws)) as pool:
        return list(pool.map(lambda kw: run(stub, kw), kws))


def small_cache(extra=()):
    """Flags of a daemon whose device tier is too small for the load. Without speculative
    decoding (test_speculate.py preempts with it), whose many tokens a pass make the requests
    overlap less: the preemptions asserted here need them to."""
    return ["--kv-cache-mb", "1", "--host-cache-mb", "4", "--disk-cache-mb", "0",
            "--metrics-listen", "127.0.0.1:0", "--speculate", "0", *extra]


def test_preempted_requests_give_the_tokens_they_give_alone(q51_model, data_dir):
    kws = [request(i) for i in range(12)]
    d = Daemon(q51_model, data_dir, extra=small_cache())
    try:
        s = d.stub()
        alone = [run(s, kw)[0] for kw in kws]
        assert all(len(a[1]) == 128 for a in alone[::3])  # the greedy ones ran to max_tokens
        s.Evict(pb.EvictRequest(all=True))
        port = metrics_port(d)
        before, _ = scrape(port)
        assert val(before, "prefixd_preemptions_total") == 0
        st0 = s.Stats(pb.StatsRequest())
        together = concurrently(s, kws)
        after, _ = scrape(port)
        st1 = s.Stats(pb.StatsRequest())
        assert (st1.preemptions, st1.recomputed_tokens, st1.running) == (
            val(after, "prefixd_preemptions_total"),
            val(after, "prefixd_recomputed_tokens_total"), 0)
        # the hit rate counts each request's prompt once (Generate matches all but its last
        # token): neither the tries of requests waiting for room nor the resumes' matches
        assert st1.query_tokens - st0.query_tokens == sum(
            len(kw["prompt"].tokens.ids) - 1 for kw in kws)
        assert st1.hit_tokens - st0.hit_tokens == sum(f.usage.cached_tokens for _, f in together)
        preempted = val(after, "prefixd_preemptions_total")
        # 12 x 11 blocks or so to reach: past 64, so sequences were preempted and resumed
        assert preempted >= 2, preempted
        # a resumed sequence matches its published blocks (in the device tier, or restored from
        # the host tier): it computes again only what its last, partial block held
        recomputed = val(after, "prefixd_recomputed_tokens_total")
        assert 0 < recomputed <= preempted * 16, (recomputed, preempted)
        for i, ((got, final), want) in enumerate(zip(together, alone)):
            assert got == want, f"request {i} differs after {preempted} preemptions"
            # what it reports is its first admission's, not what it matched when it resumed: the
            # cache was empty, so at most the shared two blocks came from it
            assert final.usage.cached_tokens == 0 or (i % 2 == 0 and
                                                      final.usage.cached_tokens == 32), i
            assert final.usage.prompt_tokens == len(kws[i]["prompt"].tokens.ids)
            assert final.usage.generated_tokens == len(want[1])
        assert val(after, "prefixd_generated_tokens_total") - val(
            before, "prefixd_generated_tokens_total") == sum(len(a[1]) for a in alone)
        assert val(after, "prefixd_running_sequences") == 0
        assert val(after, "prefixd_queue_depth") == 0
        # every block went back: the tree holds what was published, no sequence holds anything
        assert st1.queue_depth == 0
        s.Evict(pb.EvictRequest(all=True))
        assert all(t.blocks_used == 0 for t in s.Stats(pb.StatsRequest()).tiers)
    finally:
        assert d.stop() == 0


def test_full_admission_never_preempts_and_gives_the_same_tokens(q51_model, data_dir):
    kws = [request(i, max_tokens=96) for i in range(8)]
    d = Daemon(q51_model, data_dir, extra=small_cache(["--kv-admission", "full"]))
    try:
        s = d.stub()
        alone = [run(s, kw)[0] for kw in kws]
        s.Evict(pb.EvictRequest(all=True))
        together = concurrently(s, kws)
        assert [t[0] for t in together] == alone
        m, _ = scrape(metrics_port(d))
        assert val(m, "prefixd_preemptions_total") == 0
    finally:
        assert d.stop() == 0


def test_a_request_the_cache_could_never_hold_is_refused_at_once(q51_model, data_dir):
    d = Daemon(q51_model, data_dir, extra=small_cache())
    try:
        s = d.stub()
        # 64 blocks hold 1,024 tokens: 40 + 1,100 could never fit, even alone; it is refused
        # while another request runs, not after it
        running = threading.Thread(target=run, args=(s, request(0, max_tokens=200)))
        running.start()
        t0 = time.time()
        with pytest.raises(grpc.RpcError) as e:
            run(s, request(3, max_tokens=1100))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KV cache cannot hold this request" in e.value.details()
        running.join()
        assert time.time() - t0 < 120
        # and what fits still runs
        got, final = run(s, request(3, max_tokens=900))
        assert final.usage.generated_tokens == 900
    finally:
        assert d.stop() == 0


def test_a_drain_finishes_preempted_requests(q51_model, data_dir):
    """SIGTERM refuses what has not started; a preempted request had, and must finish."""
    kws = [request(i, max_tokens=120) for i in range(12)]
    # under ASan the drain takes minutes: its timeout must not be what ends it
    d = Daemon(q51_model, data_dir, extra=small_cache(["--drain-timeout", "800"]))
    s = d.stub()
    port = metrics_port(d)
    results = {}
    start = threading.Barrier(len(kws))

    def one(i):
        got = 0
        start.wait()  # all at once: a request that ran alone to its end would preempt nothing
        try:
            for m in s.Generate(pb.GenerateRequest(**kws[i]), timeout=300):
                got += len(m.token_ids)
                if m.finish_reason:
                    results[i] = (m.finish_reason, got)
        except grpc.RpcError as e:
            results[i] = (e, got)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(kws))]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    # the first requests may finish before the cache fills (a busy machine starts the threads
    # late): what counts is a preemption while others still run
    while val(scrape(port)[0], "prefixd_preemptions_total") == 0:
        assert time.time() < deadline and len(results) < len(kws), \
            f"nothing was preempted: {len(results)} of {len(kws)} requests ended"
        time.sleep(0.005)
    d.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert d.proc.wait(timeout=120) == 0  # the drain's own exit (a second SIGTERM would kill)
    assert d.stop() == 0
    assert len(results) == len(kws)
    # refused: only what had not started (nothing streamed); everything that had, preempted
    # or not, ran to its end
    for i, (outcome, got) in results.items():
        if isinstance(outcome, grpc.RpcError):
            assert outcome.code() == grpc.StatusCode.UNAVAILABLE and got == 0, (i, outcome, got)
        else:
            assert got > 0 and outcome in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP), (i, got)
    assert sum(not isinstance(o, grpc.RpcError) for o, _ in results.values()) >= 2
