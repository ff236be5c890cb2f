"""HTTP/2 abuse against a running prefixd, while a well-behaved grpcio client on another
connection keeps its latency.

Each attack runs in a child process (abuse.py) over raw frames for a bounded time, looping over
fresh connections; it must end every connection it opens in a GOAWAY or a refusal (RST_STREAM,
a gRPC status, the socket closed). Meanwhile this process measures the p50 latency of
sequential Health (answered by the loop thread, which owns every socket) or Tokenize (a round
trip through the engine thread) calls on its own channel, against a baseline of the same calls
taken just before the attack: it must stay within 2x, or within 0.1 ms of it (NOISE_MS). The
baseline is taken while a process spins on the attacker's core at its niceness, as the attacker
will: on a 2-core machine the attacker's own CPU would otherwise be measured as the daemon's
weakness (a quiet baseline gave 1.1x to 2.07x for the same binary, depending on what else the
host ran). The machine may be shared, so a p50 over that bound is measured again (a fresh
baseline and a fresh attack, three rounds at most) before the test fails; every round's figures
are reported.

Afterwards the daemon must still serve, hold no block (Evict all, then Stats: device tier 0)
and exit 0 on SIGTERM.
"""
import os
import resource
import socket
import threading
import time

import grpc
import pytest

from pd_harness import (CHANNEL_OPTIONS, Daemon, abuse_result, code_of, evict_all_until_empty,
                        generate, p50, pb, pb_grpc, probe_latencies, report, scaled, start_abuse,
                        start_attacker_load, wait_started)

ATTACK_S = scaled(2.0, 20.0)      # each attack's duration
BASE_N = scaled(300, 2000)        # baseline calls
MAX_RATIO = 2.0
# ... or this much over the baseline, in ms: the noise floor of a p50 of 50 to 150 us calls. With
# no attack at all, the same probe's p50 was 0.051 ms in one 3 s round and 0.156 ms in the next
# (beside the same spinning process, by where the scheduler placed the client's threads and the
# daemon's loop thread); a ping burst's 0.05 -> 0.107 ms read as a 2.1x failure.
NOISE_MS = 0.1


def within_bound(under, base):
    """Whether the p50 of `under` stays within MAX_RATIO of `base`'s, or within NOISE_MS of it."""
    return p50(under) <= MAX_RATIO * p50(base) or p50(under) - p50(base) <= NOISE_MS


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tiny = os.environ.get("PD_TINY_MODEL")
    if not tiny or not os.path.exists(tiny):
        pytest.skip("PD_TINY_MODEL not built")
    # a context of 512 tokens bounds the slow readers' Generate (ignore_eos, no max_tokens)
    d = Daemon(tiny, str(tmp_path_factory.mktemp("abuse")), extra=["--max-context", "512"])
    yield d
    assert d.alive(), "the daemon died during the abuse tests:\n" + d.log_text()[-3000:]
    assert d.stop() == 0


def loaded_baseline(stub, kind, seconds=3.0):
    """The p50 baseline of `kind` calls taken beside a process spinning on one core: the share of
    a 2-core machine that an attacker (or the engine generating) takes during the measurement."""
    hog = start_attacker_load()
    try:
        return probe_latencies(stub, kind, n=BASE_N, seconds=seconds)
    finally:
        hog.kill()
        hog.wait()


def measured_attack(d, mode, kind="health", seconds=ATTACK_S, started_line=False, attempts=3,
                    **args):
    """Runs an attack while probing; returns (baseline ms list, under-attack ms list, the
    attack's summary), trying again (up to `attempts` rounds) while the p50 is out of bound
    (within_bound). The baseline runs beside a process spinning on the attacker's core
    (loaded_baseline). The attack runs for the whole of `seconds` at abuse.py's connection rate,
    with no bound on the count (a bound of 1,000 ended a ping burst in 0.17 s on a fast machine,
    before the probe had made 20 calls)."""
    stub = d.stub()
    probe_latencies(stub, kind, n=50)  # connect and warm up the channel
    tries = []
    for _ in range(attempts):
        base = loaded_baseline(stub, kind)
        proc = start_abuse(mode, d.port, seconds, **args)
        if started_line:
            wait_started(proc)
        else:
            time.sleep(0.2)
        under = probe_latencies(stub, kind, seconds=seconds + 5,
                                stop=lambda: proc.poll() is not None)
        result = abuse_result(proc)
        ratio = p50(under) / p50(base)
        tries.append({"base_p50_ms": round(p50(base), 4), "under_p50_ms": round(p50(under), 4),
                      "ratio": round(ratio, 3), "n_base": len(base), "n_under": len(under)})
        if within_bound(under, base):
            break
    report(f"abuse_{mode}", probe=kind, attempts=tries, attack=result)
    assert len(under) >= 20, f"too few calls got through during the attack: {tries}"
    assert within_bound(under, base), \
        f"{kind} p50 {tries} under {mode}: more than {MAX_RATIO}x and {NOISE_MS} ms over baseline"
    return base, under, result


def still_serving(d):
    s = d.stub()
    assert s.Health(pb.HealthRequest()).status == pb.HealthResponse.STATUS_SERVING
    _, ids, f = generate(s, pb.Prompt(text="still there?"), max_tokens=4,
                         sampling=pb.SamplingParams(ignore_eos=True))
    assert f.usage.generated_tokens == 4 == len(ids)


def test_rapid_reset_ends_in_goaway(daemon):
    _, _, r = measured_attack(daemon, "rapid_reset", kind="tokenize")
    assert r["connections"] >= 2 and set(r["ends"]) <= {"goaway:INTERNAL_ERROR",
                                                      "goaway:ENHANCE_YOUR_CALM", "closed"}, r
    # nghttp2's guard (PD_GRPC_RESET_BURST/RATE): 1,000 resets at once, then 1,000/s; each
    # connection lasted well under 1 s (1,100 to 2,100 streams seen), 2 s at most
    assert max(r["streams_per_conn"]) <= 3000, r["streams_per_conn"]
    still_serving(daemon)


def test_ping_burst_is_cut_off(daemon):
    _, _, r = measured_attack(daemon, "ping_burst", kind="health", burst=4000)
    assert r["connections"] >= 2 and "open" not in r["ends"], r
    still_serving(daemon)


def test_paced_ping_flood_keeps_latency(daemon):
    measured_attack(daemon, "ping_paced", kind="health", batch=200)
    still_serving(daemon)


def test_paced_ping_flood_is_ended_by_the_daemon(daemon):
    proc = start_abuse("ping_paced", daemon.port, 3.0, batch=200, max_pings=500_000, max_conns=1)
    r = abuse_result(proc)
    report("abuse_ping_paced_end", attack=r)
    assert "open" not in r["ends"], f"the daemon answered {r['pings_per_conn']} pings: {r}"


def test_streams_over_the_limit_end_in_goaway(daemon):
    _, _, r = measured_attack(daemon, "streams", kind="health", limit=100, extra=20)
    assert r["advertised"] == 100, r
    # the client acknowledged SETTINGS, so stream 101 is a connection error: GOAWAY
    assert r["connections"] >= 2 and set(r["ends"]) == {"goaway:PROTOCOL_ERROR"}, r
    still_serving(daemon)


def test_streams_over_an_unacknowledged_limit_are_refused(daemon):
    # before the client acknowledged the limit, the extra streams are refused one by one
    # (RST_STREAM REFUSED_STREAM) and the 100 within the limit still work
    proc = start_abuse("streams", daemon.port, 1.0, limit=100, extra=20, ack_settings=False,
                       max_conns=20)
    r = abuse_result(proc)
    report("abuse_streams_unacked", attack=r)
    assert set(r["ends"]) == {"refused"}, r
    assert r["refused"] == 20 * r["connections"] and r["finished_ok"] == r["connections"], r


def test_slow_reader_blocks_no_one(daemon):
    """Generate streams (ignore_eos, no max_tokens: up to the 512-token context) on connections
    whose SETTINGS_INITIAL_WINDOW_SIZE is 0 and never updated: the daemon can send them no DATA.
    Other connections keep their latency while the engine generates for them (against a baseline
    of as many streams that read what they get, and the same well-behaved client), the engine
    finishes those sequences and gives their blocks back although nothing was delivered, and
    afterwards the engine-thread latency (Tokenize) is back to its baseline while the stalled
    streams are still open."""
    d = daemon
    req = pb.GenerateRequest(prompt=pb.Prompt(text="a reader that never reads " * 8),
                             sampling=pb.SamplingParams(ignore_eos=True))
    n_conns, n_streams = scaled(2, 8), scaled(4, 25)
    hold_s = scaled(20.0, 60.0)
    stub = d.stub()
    probe_latencies(stub, "tokenize", n=50)
    tok_base = probe_latencies(stub, "tokenize", n=BASE_N, seconds=3.0)

    def health_while_generating(open_window, seconds):
        """Health latencies for 1 s while a well-behaved Generate (32 tokens) streams to its end
        on another connection, and abuse.py's slow reader sends its n_conns x n_streams requests:
        stalled (the attack), or with open windows, reading everything (the baseline: the same
        engine work, delivered, from the same kind of process; the baseline's readers were once
        threads of this process, and 200 of them made the probe's own p50 13 ms). Returns
        (latencies, the reader process)."""
        proc = start_abuse("slow_reader", d.port, seconds, request=req.SerializeToString().hex(),
                           conns=n_conns, streams=n_streams, open_window=open_window)
        wait_started(proc)
        other = {}

        def well_behaved():
            other["r"] = generate(d.stub(), pb.Prompt(text="a normal client"), max_tokens=32,
                                  sampling=pb.SamplingParams(ignore_eos=True), timeout=60)
        t = threading.Thread(target=well_behaved)
        t.start()
        lat = probe_latencies(stub, "health", seconds=1.0)
        t.join(60)
        assert "r" in other and other["r"][2].usage.generated_tokens == 32
        return lat, proc

    health_base, readers = health_while_generating(True, 3.0)
    base_readers = abuse_result(readers)
    # while the engine generates for the stalled streams: the loop thread still answers, and a
    # well-behaved Generate on another connection streams to its end
    health, proc = health_while_generating(False, hold_s)
    health_tries = [round(p50(health) / p50(health_base), 3)]
    if not within_bound(health, health_base):  # a shared machine: again, the streams still stalled
        health_base = loaded_baseline(stub, "health", seconds=2.0)
        health = probe_latencies(stub, "health", seconds=1.0)
        health_tries.append(round(p50(health) / p50(health_base), 3))
    # the stalled sequences finish in the engine: every block can be evicted
    t0 = time.monotonic()
    assert evict_all_until_empty(stub, timeout=hold_s - 5) == 0, \
        "the stalled streams' sequences still hold blocks"
    finished_s = time.monotonic() - t0
    tries = []
    for _ in range(2):
        tok_after = probe_latencies(stub, "tokenize", n=BASE_N, seconds=2.0)
        tries.append(round(p50(tok_after) / p50(tok_base), 3))
        if within_bound(tok_after, tok_base):
            break
        tok_base = probe_latencies(stub, "tokenize", n=BASE_N, seconds=2.0)
    assert proc.poll() is None, "the slow reader should still be holding its streams"
    proc.kill()
    proc.wait()
    report("abuse_slow_reader", streams=n_conns * n_streams,
           health_p50_ms=round(p50(health), 4), health_base_p50_ms=round(p50(health_base), 4),
           health_ratio=health_tries, baseline_readers=base_readers,
           tokenize_base_p50_ms=round(p50(tok_base), 4), tokenize_after_ratio=tries,
           sequences_done_s=round(finished_s, 2))
    assert within_bound(health, health_base), (health_tries, p50(health), p50(health_base))
    assert within_bound(tok_after, tok_base), (tries, p50(tok_after), p50(tok_base))
    still_serving(d)


def test_oversized_messages_get_resource_exhausted(daemon):
    rss0 = daemon.rss_kb()
    _, _, r = measured_attack(daemon, "oversized", kind="tokenize", streams=4)
    assert r["requests"] >= 4 and set(r["statuses"]) == {"8"}, r  # RESOURCE_EXHAUSTED
    assert set(r["ends"]) == {"refused"}, r
    rss1 = daemon.rss_kb()
    report("abuse_oversized_rss", rss_before_kb=rss0, rss_after_kb=rss1)
    # the 4 MiB bodies are not kept: allocator caches aside, nothing per request stays (under
    # ASan freed memory stays resident in its quarantine: its leak check at exit says instead)
    assert daemon.sanitized() or rss1 - rss0 < 64 * 1024, (rss0, rss1)
    # and through a stock client as well
    raw = daemon.channel().unary_unary("/prefixd.v1.Prefixd/Tokenize",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    assert code_of(lambda: raw(b"\x0a" + b"\x01" * (5 << 20), timeout=30))[0] == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(daemon)


def test_half_open_connections_do_not_slow_others(daemon):
    n = scaled(150, 1500)
    fds0 = daemon.open_fds()
    _, _, r = measured_attack(daemon, "half_open", kind="tokenize", started_line=True, conns=n)
    assert r["connections"] == n
    # the daemon keeps them within the handshake timeout (a connection that sends no frame in
    # 3 s is closed); once the client closes them every descriptor is given back
    deadline = time.monotonic() + 10
    while daemon.open_fds() > fds0 + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    report("abuse_half_open_fds", conns=n, fds_before=fds0, fds_after=daemon.open_fds(),
           closed_by_daemon=r["ends"].get("closed", 0))
    assert daemon.open_fds() <= fds0 + 2
    still_serving(daemon)


def _low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_half_open_connections_cannot_lock_clients_out(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, preexec_fn=_low_nofile)
    socks = []
    try:
        assert d.stub().Health(pb.HealthRequest(), timeout=10).status == \
            pb.HealthResponse.STATUS_SERVING
        for _ in range(80):
            try:
                socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=5))
            except OSError:
                break
        # a well-behaved client keeps trying for a while (a daemon that closes half-open
        # connections after a handshake timeout of a few seconds passes)
        ok, end = False, time.monotonic() + scaled(4.0, 30.0)
        while not ok and time.monotonic() < end:
            ch = grpc.insecure_channel(d.target, options=CHANNEL_OPTIONS)
            try:
                ok = pb_grpc.PrefixdStub(ch).Health(pb.HealthRequest(), timeout=1).status == \
                    pb.HealthResponse.STATUS_SERVING
            except grpc.RpcError:
                time.sleep(0.2)
            finally:
                ch.close()
        report("abuse_half_open_lockout", held=len(socks), served=ok)
        assert ok, f"{len(socks)} idle connections lock every other client out"
    finally:
        for s in socks:
            s.close()
        assert d.stop() == 0


def test_unfinished_bodies_have_a_memory_bound(tiny_model, data_dir):
    from h2wire import Wire
    d = Daemon(tiny_model, data_dir)
    conns = []
    try:
        rss0 = d.rss_kb()
        chunk = b"\x00" * 16384
        for _ in range(2):
            w = Wire(d.port)
            w.preface()
            w.wait_for(lambda: w.settings_acked, 2.0)
            sids = [w.new_sid() for _ in range(100)]
            w.send(b"".join(w.headers_frame(s, "/prefixd.v1.Prefixd/Tokenize") for s in sids))
            for _ in range((4 << 20) // len(chunk)):
                if not w.send(b"".join(w.data_frames(s, chunk, end_stream=False) for s in sids)):
                    break
                w.pump(0)
            conns.append(w)
        time.sleep(0.5)
        grown_mb = (d.rss_kb() - rss0) // 1024
        report("abuse_unfinished_bodies", connections=2, rss_growth_mib=grown_mb)
        # the bound is 256 MiB of bodies; under ASan every freed body also stays resident in
        # its quarantine (256 MiB), so the ceiling there is that much higher
        limit = 1024 if d.sanitized() else 512
        assert grown_mb < limit, f"2 connections grew the daemon by {grown_mb} MiB"
    finally:
        for w in conns:
            w.close()
        assert d.stop() == 0
