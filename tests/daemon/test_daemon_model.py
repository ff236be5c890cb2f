"""prefixd on the default model (SmolLM2-135M-Instruct): what a newcomer sees. Two sessions
sharing a system prompt (the second reports the cached tokens and a lower time to first token),
a multi-turn chat that reuses its earlier turns, and a deadline that cancels a real generation."""
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
