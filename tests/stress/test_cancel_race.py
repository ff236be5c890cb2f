"""A stock grpcio client that cancels calls (or gives them deadlines of a millisecond) must not
make the daemon fail that client's other calls.

grpc-core (grpcio 1.66.2, the version scripts/setup pins) sometimes sends RST_STREAM for a
stream whose HEADERS it has not sent yet, when a call is cancelled right after it started
(grpc/grpc#19655). The daemon's nghttp2 session treats an RST_STREAM on an idle stream as a
connection error, as RFC 9113 5.1 says, and ends the connection with GOAWAY PROTOCOL_ERROR
("RST_STREAM: stream in idle"): every other call in flight on it -- here, long Generate streams
of the same client -- fails with UNAVAILABLE. The test is marked xfail until the daemon
tolerates the race (for example by ignoring an RST_STREAM for a stream id above the last one
it saw instead of ending the session).
"""
import asyncio
import time

import grpc
import pytest

from pd_harness import CHANNEL_OPTIONS, Daemon, pb, pb_grpc, report, scaled


@pytest.mark.xfail(strict=True, reason=(
    "BUG: a grpcio client's cancelled or 1 ms-deadline calls make the daemon end the whole "
    "connection (GOAWAY PROTOCOL_ERROR 'RST_STREAM: stream in idle'), failing the client's "
    "other in-flight calls with UNAVAILABLE (about 3 GOAWAYs per 5,000 such calls)."))
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
            outcome["short"][code] = outcome["short"].get(code, 0) + 1

        end = time.monotonic() + scaled(15.0, 60.0)

        def hit():
            return "UNAVAILABLE" in outcome["long"] or "UNAVAILABLE" in outcome["short"]

        async def long_calls(i):  # ten Generate streams in flight all the time
            while time.monotonic() < end and not hit():
                await long_call(i)

        async def short_calls():
            while time.monotonic() < end and not hit():
                outcome["rounds"] += 1
                await asyncio.gather(*(short_call(i) for i in range(100)))
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
