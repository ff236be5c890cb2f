"""Typed exceptions from real daemon answers, and the Admin helper on a multi-tenant daemon."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

import prefixd
from conftest import ADMIN_KEY, Daemon

LONG = "count with me: " + " ".join(str(i) for i in range(300))


def test_error_classes_carry_code_and_message():
    e = prefixd.errors.error_class(grpc.StatusCode.NOT_FOUND)("no cached prefix x",
                                                              grpc.StatusCode.NOT_FOUND)
    assert isinstance(e, prefixd.NotFound) and isinstance(e, prefixd.PrefixdError)
    assert (e.code, e.message) == (grpc.StatusCode.NOT_FOUND, "no cached prefix x")
    assert str(e) == "NOT_FOUND: no cached prefix x"
    assert prefixd.errors.error_class(grpc.StatusCode.OK) is prefixd.PrefixdError
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert prefixd.errors.error_class(code).code is code


def test_bad_key_is_unauthenticated(multi: Daemon):
    for key in ("pfx-not-a-key", ""):
        c = multi.client(key=key)
        with pytest.raises(prefixd.Unauthenticated) as e:
            c.stats()
        assert e.value.code is grpc.StatusCode.UNAUTHENTICATED and e.value.message
        assert isinstance(e.value.__cause__, grpc.RpcError)
        with pytest.raises(prefixd.Unauthenticated):
            list(c.generate("hello", max_tokens=2))
        with pytest.raises(prefixd.Unauthenticated):
            c.chat([("user", "hello")], max_tokens=2)
    # health needs no key
    assert multi.client(key="pfx-not-a-key").health() is prefixd.HealthStatus.SERVING


def test_permission_denied_and_not_found(multi: Daemon):
    admin = multi.admin()
    alpha = admin.create_tenant("alpha").api_key
    beta = admin.create_tenant("beta").api_key
    a, b = multi.client(key=alpha), multi.client(key=beta)
    # a tenant's key on the Admin service; the admin key where a tenant is needed
    with pytest.raises(prefixd.PermissionDenied):
        multi.admin(key=alpha).list_tenants()
    with pytest.raises(prefixd.PermissionDenied):
        multi.client(key=ADMIN_KEY).warm("x")
    with pytest.raises(prefixd.PermissionDenied):
        multi.client(key=ADMIN_KEY).lookup("x")
    # a namespace that does not exist, then one granted and revoked
    with pytest.raises(prefixd.NotFound):
        a.warm("shared text " * 10, namespace="team")
    with pytest.raises(prefixd.NotFound):
        list(a.generate("hello", namespace="team", max_tokens=1))
    admin.grant_namespace("alpha", "team")
    admin.grant_namespace("beta", "team")
    w = a.warm("shared text " * 10, namespace="team")
    assert b.lookup("shared text " * 10, namespace="team").cached_tokens == w.prompt_tokens
    assert b.lookup("shared text " * 10).cached_tokens == 0  # beta's private namespace
    admin.revoke_namespace("beta", "team")
    with pytest.raises(prefixd.PermissionDenied):
        b.lookup("shared text " * 10, namespace="team")
    with pytest.raises(prefixd.PermissionDenied):
        list(b.generate("hello", namespace="team", max_tokens=1))
    # another tenant's prefix looks missing
    private = a.warm("alpha's private prompt " * 8)
    with pytest.raises(prefixd.NotFound):
        b.pin(private.prefix_id)
    with pytest.raises(prefixd.NotFound):
        b.evict(private)
    assert all(p.tenant == "beta" for p in b.prefixes())
    assert [t.tenant for t in b.stats().tenants] == ["beta"]


def test_not_found_namespace_single_tenant(client: prefixd.Client):
    with pytest.raises(prefixd.NotFound) as e:
        client.chat([("user", "hi")], namespace="nope", max_tokens=1)
    assert "nope" in e.value.message
    with pytest.raises(prefixd.NotFound):
        client.pin("0" * 32)


def test_deadline_exceeded(client: prefixd.Client):
    t0 = time.time()  # the synthetic model fills its context in about 0.1 s: 10 ms deadlines
    with pytest.raises(prefixd.DeadlineExceeded) as e:
        for _ in client.generate(LONG, ignore_eos=True, timeout=0.01):
            pass
    assert time.time() - t0 < 10
    assert e.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    # the client's default deadline applies when the call names none
    with pytest.raises(prefixd.DeadlineExceeded):
        prefixd.Client(client.target, timeout=0.01).chat([("user", LONG)], ignore_eos=True)
    assert client.health() is prefixd.HealthStatus.SERVING


def test_invalid_argument(client: prefixd.Client):
    cases = [
        lambda: client.chat([("user", "x")], temperature=-1),
        lambda: list(client.generate([1, 99999])),
        lambda: list(client.generate("x " * 5000)),          # over the context limit
        lambda: list(client.generate("x", stop=[""])),
        lambda: list(client.generate([])),                   # no tokens
        lambda: client.pin("xyz"),
        lambda: client.detokenize([-1]),
        lambda: client.tokenize([7, -3]),
        lambda: client.lookup([1, 99999]),
        lambda: client.evict("not-hex"),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(prefixd.InvalidArgument) as e:
            case()
        assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT and e.value.message, i


def test_failed_precondition(client: prefixd.Client):
    w = client.warm("never pinned " * 8)
    with pytest.raises(prefixd.FailedPrecondition):
        client.unpin(w)


def test_unavailable():
    c = prefixd.Client("127.0.0.1:1", timeout=10)
    with pytest.raises(prefixd.Unavailable):
        c.health()
    c.close()


def test_resource_exhausted_when_the_queue_is_full(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, extra=["--max-running", "1", "--max-queue", "1"])
    try:
        c = d.client()
        outcomes = []

        def one(i: int) -> None:
            try:
                c.chat([("user", f"request {i} " * 20)], max_tokens=64, ignore_eos=True)
                outcomes.append("ok")
            except prefixd.ResourceExhausted as e:
                outcomes.append(e.code)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert "ok" in outcomes and grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes, outcomes
    finally:
        assert d.stop() == 0


def test_admin_tenants_limits_and_keys(multi: Daemon):
    admin = multi.admin()
    created = admin.create_tenant("gamma", max_context_tokens=64, max_concurrent_requests=2,
                                  max_blocks={"device": 100})
    assert created.api_key.startswith("pfx-")
    assert created.tenant.name == "gamma"
    assert created.tenant.limits == prefixd.TenantLimits(
        max_blocks=prefixd.TierCounts(device=100), max_concurrent_requests=2,
        max_context_tokens=64)
    assert abs(created.tenant.created_unix_ms - time.time() * 1000) < 60_000
    with pytest.raises(prefixd.AlreadyExists):
        admin.create_tenant("gamma")
    with pytest.raises(prefixd.InvalidArgument):
        admin.create_tenant("bad name")
    other = admin.create_tenant("delta", prefixd.TenantLimits(max_concurrent_requests=3),
                                max_requests_per_minute=1, max_tokens_per_minute=100_000)
    assert other.tenant.limits == prefixd.TenantLimits(
        max_concurrent_requests=3, max_requests_per_minute=1, max_tokens_per_minute=100_000)
    d = multi.client(key=other.api_key)
    d.chat([("user", "hi")], max_tokens=1)
    with pytest.raises(prefixd.ResourceExhausted, match="1 requests per minute"):
        d.chat([("user", "hi")], max_tokens=1)
    assert sorted(t.name for t in admin.list_tenants()) == ["delta", "gamma"]

    g = multi.client(key=created.api_key)
    assert g.chat([("user", "hi")], max_tokens=2).usage.generated_tokens >= 1
    with pytest.raises(prefixd.InvalidArgument):  # over the tenant's context limit
        g.chat([("user", "word " * 80)], max_tokens=1)
    admin.set_limits("gamma", max_context_tokens=1024)
    assert g.chat([("user", "word " * 80)], max_tokens=1).usage.prompt_tokens > 64
    (t,) = [t for t in admin.list_tenants() if t.name == "gamma"]
    assert t.limits == prefixd.TenantLimits(max_context_tokens=1024)  # replaced, not merged
    admin.grant_namespace("gamma", "shared")
    (t,) = [t for t in admin.list_tenants() if t.name == "gamma"]
    assert t.granted_namespaces == ["shared"]

    new_key = admin.rotate_key("gamma")
    assert new_key != created.api_key
    with pytest.raises(prefixd.Unauthenticated):
        g.stats()
    assert [s.tenant for s in multi.client(key=new_key).stats().tenants] == ["gamma"]
    # the admin sees every tenant's stats
    assert {s.tenant for s in multi.client(key=ADMIN_KEY).stats().tenants} == {"gamma", "delta"}
    admin.delete_tenant("gamma")
    with pytest.raises(prefixd.Unauthenticated):
        multi.client(key=new_key).stats()
    with pytest.raises(prefixd.NotFound):
        admin.delete_tenant("gamma")
    assert [t.name for t in admin.list_tenants()] == ["delta"]
    # Client.admin shares the client's channel and key
    with prefixd.Client(multi.target, key=ADMIN_KEY) as c:
        assert [t.name for t in c.admin.list_tenants()] == ["delta"]


def test_admin_on_a_daemon_without_admin_key(daemon: Daemon):
    with pytest.raises(prefixd.PermissionDenied) as e:
        daemon.admin(key="").list_tenants()
    assert "admin" in e.value.message
