"""The asyncio client against a live prefixd: the same calls as the sync client, several chat
sessions at once through asyncio.gather, errors and the Admin helper. Each test drives its
coroutine with asyncio.run (no pytest plugin needed)."""
from __future__ import annotations

import asyncio
import time
from typing import List

import grpc
import pytest

import prefixd
from conftest import ADMIN_KEY, Daemon
from prefixd import FinishReason, HealthStatus, Tier

SYSTEM = ("You are the assistant of a small bicycle shop. The shop sells city bikes, road bikes "
          "and cargo bikes, repairs every brand, and is open Monday to Saturday. ") * 3


def run(coro):
    return asyncio.run(coro)


def test_async_generate_streams_then_final(daemon: Daemon):
    async def main():
        async with prefixd.AsyncClient(daemon.target, timeout=60) as c:
            assert await c.health() is HealthStatus.SERVING
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
            n_prompt = len(await c.tokenize(messages=msgs, add_generation_prompt=True))
            stream = c.generate(messages=msgs, max_tokens=8, ignore_eos=True)
            chunks = [ch async for ch in stream]
            *body, final = chunks
            assert body and all(not ch.is_final for ch in body)
            assert final.finish_reason is FinishReason.LENGTH
            assert final.usage.prompt_tokens == n_prompt and final.usage.cached_tokens == 0
            assert final.usage.generated_tokens == len(stream.token_ids) == 8
            assert stream.text == await c.detokenize(stream.token_ids)
            # the same prompt again is served from the cache
            again = await c.chat(msgs, max_tokens=8, ignore_eos=True, top_logprobs=2)
            assert again.usage.cached_tokens == n_prompt - 1
            assert again.token_ids == stream.token_ids
            assert again.request_id.startswith("req-") and stream.request_id.startswith("req-")
            assert again.request_id != stream.request_id
            assert [lp.token_id for lp in again.logprobs] == again.token_ids
            assert all(len(lp.top) == 2 for lp in again.logprobs)
    run(main())


def test_async_concurrent_sessions_share_the_system_prompt(daemon: Daemon):
    """Six two-turn chat sessions at once: every turn completes, the second turn of each session
    reuses its first turn, and the shared system prompt is computed far fewer than six times."""
    async def session(c: prefixd.AsyncClient, i: int) -> List[prefixd.ChatCompletion]:
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"question number {i}"}]
        first = await c.chat(msgs, max_tokens=6, temperature=0.7, seed=i)
        msgs += [first.message, {"role": "user", "content": "and why?"}]
        second = await c.chat(msgs, max_tokens=6, temperature=0.7, seed=i)
        return [first, second]

    async def main():
        async with prefixd.AsyncClient(daemon.target, timeout=120) as c:
            n_sys = len(await c.tokenize(messages=[{"role": "system", "content": SYSTEM}]))
            results = await asyncio.gather(*(session(c, i) for i in range(6)))
            assert len(results) == 6
            for first, second in results:
                assert first.usage.generated_tokens >= 1 and first.finish_reason is not None
                assert second.usage.cached_tokens >= first.usage.prompt_tokens - 16
            firsts = [r[0].usage for r in results]
            # all but at most one session found the system prompt cached (the rest waited for
            # the leader's prefill instead of computing it again)
            hits = sum(1 for u in firsts if u.cached_tokens >= n_sys - 16)
            assert hits >= 5, firsts
            st = await c.stats()
            assert st.requests >= 12 and st.hit_tokens > 0
    run(main())


def test_async_cache_calls(daemon: Daemon):
    doc = "an async document to cache. " * 16

    async def main():
        async with prefixd.AsyncClient(daemon.target, timeout=60) as c:
            w, other = await asyncio.gather(c.warm(doc), c.warm("zebras elsewhere " * 10))
            assert w.computed_tokens == w.prompt_tokens > 0 and len(w.prefix_id) == 32
            lk = await c.lookup(doc)
            assert lk.cached_tokens == lk.prompt_tokens == w.prompt_tokens
            listed = [p async for p in c.prefixes(page_size=1)]
            assert {w.prefix_id, other.prefix_id} <= {p.id for p in listed}
            assert len(listed) == len({p.id for p in listed})
            await c.pin(w, ttl=600)
            assert [p.pinned for p in listed if p.id == w.prefix_id] == [False]
            assert [p.pinned async for p in c.prefixes() if p.id == w.prefix_id] == [True]
            await c.unpin(w.prefix_id)
            with pytest.raises(prefixd.FailedPrecondition):
                await c.unpin(w.prefix_id)
            ev = await c.evict(w)
            assert ev.device == (w.prompt_tokens + 15) // 16
            assert (await c.lookup(doc)).cached_tokens == 0
            assert (await c.evict(all=True, tier=Tier.DEVICE)).device > 0
            st = await c.stats()
            assert st.tier("device").blocks_used == 0
            assert await c.detokenize(await c.tokenize("round trip")) == "round trip"
    run(main())


def test_async_errors(multi: Daemon):
    async def main():
        async with prefixd.AsyncClient(multi.target, key="pfx-wrong", timeout=30) as bad:
            with pytest.raises(prefixd.Unauthenticated) as e:
                await bad.stats()
            assert e.value.code is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(prefixd.Unauthenticated):
                async for _ in bad.generate("hello", max_tokens=1):
                    pass
        async with prefixd.AsyncClient(multi.target, key=ADMIN_KEY, timeout=30) as root:
            created = await root.admin.create_tenant("async-tenant", max_context_tokens=1500)
            assert created.tenant.limits.max_context_tokens == 1500
            with pytest.raises(prefixd.AlreadyExists):
                await root.admin.create_tenant("async-tenant")
            with pytest.raises(prefixd.PermissionDenied):
                await root.lookup("the admin has no cache of its own")
        async with prefixd.AsyncClient(multi.target, key=created.api_key, timeout=30) as c:
            with pytest.raises(prefixd.NotFound):
                await c.warm("x", namespace="not-granted")
            with pytest.raises(prefixd.InvalidArgument):
                await c.chat([("user", "x")], temperature=-1)
            with pytest.raises(prefixd.InvalidArgument):
                await c.pin("xyz")
            with pytest.raises(prefixd.NotFound):
                await c.pin("f" * 32)
            t0 = time.time()  # the synthetic model fills its context in about 0.1 s: 10 ms
            with pytest.raises(prefixd.DeadlineExceeded):
                async for _ in c.generate("count: " + " ".join(map(str, range(200))),
                                          ignore_eos=True, timeout=0.01):
                    pass
            assert time.time() - t0 < 10
            # cancel mid-stream
            stream = c.generate("count: " + " ".join(map(str, range(200))), ignore_eos=True)
            assert (await stream.__anext__()).token_ids
            stream.cancel()
            with pytest.raises(prefixd.Cancelled):
                await stream.__anext__()
            assert await c.health() is HealthStatus.SERVING
        async with prefixd.AsyncAdmin(multi.target, key=ADMIN_KEY) as admin:
            assert [t.name for t in await admin.list_tenants()] == ["async-tenant"]
            await admin.set_limits("async-tenant", max_concurrent_requests=1)
            key2 = await admin.rotate_key("async-tenant")
            assert key2 != created.api_key
            await admin.grant_namespace("async-tenant", "ns1")
            await admin.revoke_namespace("async-tenant", "ns1")
            (t,) = await admin.list_tenants()
            assert t.limits == prefixd.TenantLimits(max_concurrent_requests=1)
            assert t.granted_namespaces == []
            await admin.delete_tenant("async-tenant")
            assert await admin.list_tenants() == []
    run(main())


def test_async_unix_socket(daemon: Daemon):
    async def main():
        async with prefixd.AsyncClient(f"unix:{daemon.unix}", timeout=30) as c:
            replies = await asyncio.gather(*(c.chat([("user", f"hello {i}")], max_tokens=3,
                                                    ignore_eos=True) for i in range(3)))
            assert [r.usage.generated_tokens for r in replies] == [3, 3, 3]
    run(main())


def test_async_client_built_outside_the_loop(daemon: Daemon):
    c = prefixd.AsyncClient(daemon.target, timeout=30)  # the channel opens inside the loop

    async def main():
        async with c:
            return await c.health()
    assert run(main()) is HealthStatus.SERVING
