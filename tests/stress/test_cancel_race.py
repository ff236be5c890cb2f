"""A stock grpcio client that cancels calls (or gives them deadlines of a millisecond) must not
make the daemon fail that client's other calls.

Two causes ended such a client's connection (GOAWAY), failing its other calls with UNAVAILABLE;
this test was a strict xfail until both were fixed:
- grpc-core sometimes sends RST_STREAM for a stream whose HEADERS it has not sent yet, when a
  call is cancelled right after it started (grpc/grpc#19655); nghttp2 treats a reset of an idle
  stream as a connection error (RFC 9113 5.1): GOAWAY PROTOCOL_ERROR. The daemon now drops
  exactly such frames before nghttp2 sees them (daemon/pd_h2_filter.h). The second test makes
  the race happen every time on a raw connection.
- the daemon's Rapid Reset guard, then 1,000 resets at once and 100 a second: a client whose
  calls time out or are cancelled resets every one of them, and at ~400 a second it was cut off
  (GOAWAY INTERNAL_ERROR). The guard is now 1,000 at once and 1,000 a second
  (PD_GRPC_RESET_BURST/RATE, daemon/pd_grpc_server.h). The first test cancels about 500 calls a
  second for 15 s (7,500 resets).
"""
import asyncio
import time

import grpc
import pytest

from pd_harness import CHANNEL_OPTIONS, Daemon, pb, pb_grpc, report, scaled


def test_cancelled_calls_do_not_fail_other_calls(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, extra=["--max-context", "512"])
    outcome = {"long": {}, "short": {}, "rounds": 0}

    async def main():
        ch = grpc.aio.insecure_channel(d.target, options=CHANNEL_OPTIONS)
        stub = pb_grpc.PrefixdStub(ch)

        async def long_call(i):
            req = pb.GenerateRequest(prompt=pb.Prompt(text=f"a long answer {i}"), max_tokens=200,
                                     sampling=pb.SamplingParams(ignore_eos=True))
            try:
                async for _ in stub.Generate(req, timeout=60):
                    pass
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            outcome["long"][code] = outcome["long"].get(code, 0) + 1

        async def short_call(i):
            try:
                await stub.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="x " * 50)),
                                    timeout=0.0002 + (i % 20) * 0.0002)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                if code == "UNAVAILABLE":
                    outcome.setdefault("unavailable", []).append(e.details())
            outcome["short"][code] = outcome["short"].get(code, 0) + 1

        end = time.monotonic() + scaled(15.0, 60.0)

        def hit():
            return "UNAVAILABLE" in outcome["long"] or "UNAVAILABLE" in outcome["short"]

        async def long_calls(i):  # ten Generate streams in flight all the time
            while time.monotonic() < end and not hit():
                await long_call(i)

        async def short_calls():  # rounds of 100, at most 5 rounds a second: the resets stay
            while time.monotonic() < end and not hit():  # under the daemon's Rapid Reset guard
                outcome["rounds"] += 1
                started = time.monotonic()
                await asyncio.gather(*(short_call(i) for i in range(100)))
                await asyncio.sleep(max(0.0, started + 0.2 - time.monotonic()))
        await asyncio.gather(short_calls(), *(long_calls(i) for i in range(10)))
        await ch.close()

    try:
        asyncio.run(main())
        report("cancel_race", **outcome)
        # a call is cancelled or times out, or completes: UNAVAILABLE means the connection was
        # ended under it because of another call's cancellation
        assert "UNAVAILABLE" not in outcome["long"] and "UNAVAILABLE" not in outcome["short"], \
            outcome
    finally:
        assert d.stop() == 0


def test_reset_of_a_stream_never_opened_keeps_the_connection(tiny_model, data_dir):
    """grpc-core's race (grpc/grpc#19655), made to happen every time on a raw connection: a
    Generate stream is in flight, then RST_STREAM frames arrive for stream ids no HEADERS opened
    (the next ones, and one far ahead, split across writes), then more requests. No GOAWAY: the
    Generate stream finishes OK, and later streams -- one of them on an id that was 'reset'
    before it was opened -- are served. A reset of an even (server-side) id is still a protocol
    error: the filter is no wider than the race."""
    from h2wire import Wire, grpc_body
    d = Daemon(tiny_model, data_dir)
    try:
        w = Wire(d.port)
        w.preface()
        assert w.wait_for(lambda: w.settings_acked, 5.0)
        gen = pb.GenerateRequest(prompt=pb.Prompt(text="a long answer"), max_tokens=64,
                                 sampling=pb.SamplingParams(ignore_eos=True))
        long_sid = w.request("/prefixd.v1.Prefixd/Generate", gen.SerializeToString())
        ahead = w.next_sid  # not opened yet
        raw = w.rst_frame(ahead) + w.rst_frame(ahead + 2) + w.rst_frame(ahead + 1000)
        for i in range(0, len(raw), 5):  # frame headers split across reads
            w.send(raw[i:i + 5])
            time.sleep(0.001)
        tok = pb.TokenizeRequest(prompt=pb.Prompt(text="hello world")).SerializeToString()
        sids = [w.request("/prefixd.v1.Prefixd/Tokenize", tok) for _ in range(3)]
        assert sids[0] == ahead  # this id was "reset" before it was opened
        assert w.wait_for(lambda: all(w.status(s) is not None for s in sids + [long_sid]), 60.0)
        assert w.goaway is None and not w.closed, (w.goaway, w.closed)
        assert [w.status(s) for s in sids + [long_sid]] == [0, 0, 0, 0]
        w.send(w.rst_frame(2))  # an even id: the client's mistake, a connection error
        assert w.wait_end(10.0) == "goaway" and w.goaway[0] == 1  # PROTOCOL_ERROR
        w.close()
        assert d.alive()
        assert d.stub().Health(pb.HealthRequest()).status == pb.HealthResponse.STATUS_SERVING
    finally:
        assert d.stop() == 0
