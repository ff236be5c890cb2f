"""prefixd on the default model (SmolLM2-135M-Instruct): what a newcomer sees. Two sessions
sharing a system prompt (the second reports the cached tokens and a lower time to first token),
a multi-turn chat that reuses its earlier turns, a deadline that cancels a real generation, and
speculative decoding that keeps the model's own tokens."""
import time

import grpc
import pytest

from conftest import Daemon, chat, generate, pb

SYSTEM = ("You are Ada, the support assistant of a bicycle shop. Answer briefly and politely. "
          "The shop sells city bikes, road bikes and cargo bikes, repairs all brands, and is "
          "open Monday to Saturday from 9 to 18. ") * 6


@pytest.fixture
def daemon(default_model, data_dir):
    d = Daemon(default_model, data_dir)
    yield d
    assert d.stop() == 0


def test_second_session_reuses_the_system_prompt(daemon):
    s = daemon.stub()
    n_sys = len(s.Tokenize(pb.TokenizeRequest(prompt=chat(("system", SYSTEM)))).token_ids)
    _, _, cold = generate(s, chat(("system", SYSTEM), ("user", "When are you open?")),
                          max_tokens=8)
    _, _, hit = generate(s, chat(("system", SYSTEM), ("user", "Do you repair cargo bikes?")),
                         max_tokens=8)
    assert cold.usage.cached_tokens == 0
    assert hit.usage.cached_tokens >= n_sys, (hit.usage, n_sys)
    # only the user turn was computed (how much sooner its first token came is a benchmark's
    # question: bench/results/daemon_cpu.md, not a test's)
    assert hit.usage.prompt_tokens - hit.usage.cached_tokens < 32, hit.usage


def test_multi_turn_chat_reuses_earlier_turns(daemon):
    s = daemon.stub()
    turns = [("system", SYSTEM), ("user", "Hi! Do you sell road bikes?")]
    answer, _, f1 = generate(s, chat(*turns), max_tokens=32)
    turns += [("assistant", answer), ("user", "And what are your opening hours?")]
    _, _, f2 = generate(s, chat(*turns), max_tokens=8)
    assert f2.usage.cached_tokens >= f1.usage.prompt_tokens + f1.usage.generated_tokens - 16, \
        (f1.usage, f2.usage)


def test_deadline_cancels_a_real_generation(daemon):
    s = daemon.stub()
    t0 = time.time()
    try:
        generate(s, chat(("user", "Write a long story.")), max_tokens=2000,
                 sampling=pb.SamplingParams(ignore_eos=True), timeout=0.5)
        raise AssertionError("should have passed its deadline")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.time() - t0 < 3
    # the daemon dropped the sequence at its own deadline (a step after the client's): then
    # every block can be evicted
    for _ in range(50):
        s.Evict(pb.EvictRequest(all=True))
        dev = [t for t in s.Stats(pb.StatsRequest()).tiers if t.tier == pb.TIER_DEVICE][0]
        if dev.blocks_used == 0:
            break
        time.sleep(0.05)
    assert dev.blocks_used == 0


PASSAGE = ("The river Vecht flows north from Utrecht to Muiden, where it meets the IJmeer. Along "
           "its banks stand dozens of country houses built by Amsterdam merchants in the "
           "seventeenth and eighteenth centuries.")


def test_speculation_keeps_the_real_models_tokens(default_model, data_dir):
    """Speculative decoding on real text: a quote (drafts mostly kept), free writing (mostly
    rejected), greedy and seeded sampling, with log-probabilities: every draft verified
    (PREFIXD_SPECULATE_ALWAYS=1) gives exactly the tokens and log-probabilities of
    --speculate 0."""
    reqs = [(chat(("user", f"Repeat this text exactly:\n\n{PASSAGE}")), {}),
            (chat(("user", "Write a short poem about rain.")), {}),
            (chat(("user", f"Summarize:\n\n{PASSAGE}")),
             {"sampling": pb.SamplingParams(temperature=0.7, top_p=0.9, seed=3)})]

    def run(speculate):
        d = Daemon(default_model, data_dir, extra=["--speculate", str(speculate)],
                   env={"PREFIXD_SPECULATE_ALWAYS": "1"})
        try:
            s = d.stub()
            out = []
            for prompt, kw in reqs:
                lps, ids = [], []
                req = pb.GenerateRequest(prompt=prompt, max_tokens=64, top_logprobs=2,
                                         cache=pb.CacheOptions(no_cache=True), **kw)
                for m in s.Generate(req, timeout=300):
                    ids += list(m.token_ids)
                    lps += [(lp.logprob, tuple(lp.top_ids)) for lp in m.logprobs]
                out.append((ids, lps))
            st = s.Stats(pb.StatsRequest())
            return out, st.spec_draft_tokens, st.spec_accepted_tokens
        finally:
            assert d.stop() == 0

    off, drafted_off, _ = run(0)
    on, drafted, kept = run(8)
    assert drafted_off == 0
    for i in range(len(reqs)):
        assert on[i] == off[i], f"request {i}"
    assert kept > 0 and drafted > kept, (drafted, kept)
