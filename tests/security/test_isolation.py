"""Tenant isolation: one tenant's cached prompts are never another's hits, in any tier and
across a restart; a request cannot name a namespace it was not granted; the Admin service needs
the admin key.

The model is tiny-q5_1 (16 KiB per block) with tiers of 128 device, 128 host and ~700 disk
blocks; prompts are 300 token ids (19 blocks). A tenant's prefix is moved one tier colder with
its own Evict(all, tier=...) (the device tier's blocks go to host RAM, host RAM's to disk).
"""
import random

import grpc

from pd_harness import Daemon, code_of, generate, ids_prompt, pb, report

ADMIN = "admin-key-for-the-security-tests-0123"
TIERS = ["--kv-cache-mb", "2", "--host-cache-mb", "2", "--disk-cache-mb", "16"]
C = grpc.StatusCode


def doc(i, n_tokens=300):
    rng = random.Random(7000 + i)
    return [10 + i % 400] + [rng.randrange(5, 500) for _ in range(n_tokens - 1)]


def storage(d):
    return d.stub(ADMIN).Stats(pb.StatsRequest()).storage


def restores(d):
    s = storage(d)
    return (s.restored_from_host_blocks, s.restored_from_disk_blocks)


def first_tokens(stub, ids, namespace=""):
    _, out, final = generate(stub, ids_prompt(ids), max_tokens=4,
                             sampling=pb.SamplingParams(ignore_eos=True),
                             cache=pb.CacheOptions(namespace=namespace))
    return out, final


def check_isolated(d, ka, kb, ids, where):
    """`ids` is cached by alpha in tier `where`: beta gets no hit and restores nothing; alpha
    gets its hit from that tier. Returns figures."""
    a, b = d.stub(ka), d.stub(kb)
    lk = a.Lookup(pb.LookupRequest(prompt=ids_prompt(ids)))
    assert lk.cached_tokens == len(ids) and getattr(lk.cached_tokens_by_tier, where) == len(ids), \
        (where, lk)
    assert b.Lookup(pb.LookupRequest(prompt=ids_prompt(ids))).cached_tokens == 0
    before = restores(d)
    out_b, fb = first_tokens(b, ids)
    assert fb.usage.cached_tokens == 0, (where, fb.usage)
    assert restores(d) == before, f"{where}: beta's request restored alpha's blocks"
    out_a, fa = first_tokens(a, ids)
    assert fa.usage.cached_tokens >= len(ids) - 16, (where, fa.usage)
    assert getattr(fa.usage.cached_tokens_by_tier, where) > 0, (where, fa.usage)
    assert out_a == out_b  # same model, same prompt: same greedy tokens, cached or not
    return {"beta_cached": fb.usage.cached_tokens, "alpha_cached": fa.usage.cached_tokens,
            "alpha_by_tier": [fa.usage.cached_tokens_by_tier.device,
                              fa.usage.cached_tokens_by_tier.host,
                              fa.usage.cached_tokens_by_tier.disk]}


def test_no_cross_tenant_hit_in_any_tier_or_after_restart(q51_model, data_dir):
    d = Daemon(q51_model, data_dir, admin_key=ADMIN, extra=TIERS)
    figures = {}
    try:
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        kb = adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
        kg = adm.CreateTenant(pb.CreateTenantRequest(name="gamma")).api_key
        for t in ("alpha", "gamma"):
            adm.GrantNamespace(pb.GrantNamespaceRequest(tenant=t, namespace="team"))
        a = d.stub(ka)
        # device tier
        a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(1))))
        figures["device"] = check_isolated(d, ka, kb, doc(1), "device")
        # host RAM: alpha's device blocks move one tier colder
        a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(2))))
        a.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DEVICE))
        figures["host"] = check_isolated(d, ka, kb, doc(2), "host")
        # disk: device -> host -> disk
        a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(3))))
        a.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DEVICE))
        a.Evict(pb.EvictRequest(all=True, tier=pb.TIER_HOST))
        figures["disk"] = check_isolated(d, ka, kb, doc(3), "disk")
        # a shared namespace: usable by the tenants granted it, and only by them
        g = d.stub(kg)
        a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(4)), cache=pb.CacheOptions(namespace="team")))
        assert g.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(4)), namespace="team")) \
            .cached_tokens == 300
        _, fg = first_tokens(g, doc(4), namespace="team")
        assert fg.usage.cached_tokens >= 288, fg.usage
        _, fg_private = first_tokens(g, doc(4))  # gamma's own namespace: nothing
        assert fg_private.usage.cached_tokens == 0
        b = d.stub(kb)
        assert code_of(lambda: b.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(4)),
                                                         namespace="team")))[0] == \
            C.PERMISSION_DENIED
        assert code_of(lambda: first_tokens(b, doc(4), namespace="team"))[0] == C.PERMISSION_DENIED
        _, fb = first_tokens(b, doc(4))
        assert fb.usage.cached_tokens == 0
        # for the restart: one more prefix of alpha's, on disk
        a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(5))))
        a.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DEVICE))
        a.Evict(pb.EvictRequest(all=True, tier=pb.TIER_HOST))
        d.restart()
        assert "disk_blocks_indexed=0 " not in d.log_text().split('msg="prefixd ready"')[-1]
        figures["restart"] = check_isolated(d, ka, kb, doc(5), "disk")
        # the shared namespace after the restart: gamma still, beta still not
        g, b = d.stub(kg), d.stub(kb)
        assert code_of(lambda: first_tokens(b, doc(4), namespace="team"))[0] == C.PERMISSION_DENIED
        lk = g.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(4)), namespace="team"))
        figures["shared_after_restart_gamma_lookup"] = lk.cached_tokens
        # revoking takes the namespace away at once
        d.admin(ADMIN).RevokeNamespace(pb.RevokeNamespaceRequest(tenant="gamma", namespace="team"))
        assert code_of(lambda: first_tokens(g, doc(4), namespace="team"))[0] == C.PERMISSION_DENIED
        report("isolation_tiers", **figures)
    finally:
        assert d.stop() == 0


def _raw_generate_with_namespace(d, key, namespace_bytes, prompt):
    """A GenerateRequest whose CacheOptions.namespace holds any bytes (not only valid UTF-8,
    which the Python protobuf runtime insists on): encoded by hand. Returns the final
    GenerateResponse."""
    prompt = prompt.SerializeToString()
    cache = b"\x0a" + _varint(len(namespace_bytes)) + namespace_bytes
    body = (b"\x0a" + _varint(len(prompt)) + prompt + b"\x18\x01" +
            b"\x32" + _varint(len(cache)) + cache)
    call = d.channel().unary_stream("/prefixd.v1.Prefixd/Generate",
                                    request_serializer=lambda x: x,
                                    response_deserializer=lambda x: x)
    out = list(call(body, timeout=30, metadata=[("authorization", f"Bearer {key}")]))
    return pb.GenerateResponse.FromString(out[-1])


def _varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def test_a_request_cannot_choose_another_tenants_namespace(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    try:
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        kb = adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
        adm.CreateTenant(pb.CreateTenantRequest(name="gamma"))
        adm.GrantNamespace(pb.GrantNamespaceRequest(tenant="alpha", namespace="team-a"))
        adm.GrantNamespace(pb.GrantNamespaceRequest(tenant="gamma", namespace="team-g"))
        a, b = d.stub(ka), d.stub(kb)
        secret = pb.Prompt(text="alpha's secret system prompt. " * 8)
        w = a.Warm(pb.WarmRequest(prompt=secret))
        a.Warm(pb.WarmRequest(prompt=secret, cache=pb.CacheOptions(namespace="team-a")))
        names = ["team-a", "team-g", "alpha", "beta", "gamma", "default", "TEAM-A", " team-a",
                 "team-a ", "team-a\x00", "team-a/../alpha", "*", "%", "private", "shared",
                 "alpha:private", w.prefix_id, "\u0430lpha", "x" * 70, "y" * 10000, "\n", "🙂"]
        tried, codes = 0, {}
        for ns in names:
            for kind, fn in (
                    ("generate", lambda: generate(b, secret, max_tokens=1,
                                                  cache=pb.CacheOptions(namespace=ns))),
                    ("warm", lambda: b.Warm(pb.WarmRequest(prompt=secret,
                                                           cache=pb.CacheOptions(namespace=ns)))),
                    ("lookup", lambda: b.Lookup(pb.LookupRequest(prompt=secret, namespace=ns)))):
                code, msg = code_of(fn)
                tried += 1
                codes[code.name] = codes.get(code.name, 0) + 1
                assert code in (C.PERMISSION_DENIED, C.NOT_FOUND), (kind, ns[:40], code, msg)
        for raw in (b"\xff\xfe", b"team-a\xff", b"\xc0\xae\xc0\xae", b"team-a\x00x",
                    b"\x00team-a", b"\x00" * 64):
            tried += 1
            # a prompt alpha cached in both its namespaces, and beta never sent
            fresh = ids_prompt(doc(500 + tried, 200))
            a.Warm(pb.WarmRequest(prompt=fresh))
            a.Warm(pb.WarmRequest(prompt=fresh, cache=pb.CacheOptions(namespace="team-a")))
            try:
                final = _raw_generate_with_namespace(d, kb, raw, fresh)
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
                assert e.code() in (C.PERMISSION_DENIED, C.NOT_FOUND, C.INVALID_ARGUMENT), raw
                continue
            # the daemon reads strings up to their first NUL (protobuf-c): a name starting with
            # one is the empty name, the caller's private namespace -- beta's own, no hit
            assert raw.startswith(b"\x00"), raw
            assert final.usage.cached_tokens == 0, final.usage
            codes["OK (own private namespace)"] = codes.get("OK (own private namespace)", 0) + 1
        # another tenant's prefix is reported exactly like a missing one
        for fn in (lambda: b.Pin(pb.PinRequest(prefix_id=w.prefix_id)),
                   lambda: b.Unpin(pb.UnpinRequest(prefix_id=w.prefix_id)),
                   lambda: b.Evict(pb.EvictRequest(prefix_id=w.prefix_id))):
            assert code_of(fn)[0] == C.NOT_FOUND
            tried += 1
        # admin-only targets
        assert code_of(lambda: b.ListPrefixes(pb.ListPrefixesRequest(tenant="alpha")))[0] == \
            C.PERMISSION_DENIED
        assert code_of(lambda: b.Evict(pb.EvictRequest(tenant="alpha")))[0] == C.PERMISSION_DENIED
        tried += 2
        # what beta sees: nothing of alpha's, and alpha's prefix is intact
        assert all(p.tenant == "beta" for p in b.ListPrefixes(pb.ListPrefixesRequest()).prefixes)
        assert [t.tenant for t in b.Stats(pb.StatsRequest()).tenants] == ["beta"]
        assert b.Lookup(pb.LookupRequest(prompt=secret)).cached_tokens == 0
        assert a.Lookup(pb.LookupRequest(prompt=secret)).cached_tokens == w.prompt_tokens
        report("namespace_choice", requests_tried=tried, codes=codes)
    finally:
        assert d.stop() == 0


ADMIN_RPCS = {
    "CreateTenant": pb.CreateTenantRequest(name="mallory"),
    "ListTenants": pb.ListTenantsRequest(),
    "DeleteTenant": pb.DeleteTenantRequest(name="alpha"),
    "SetLimits": pb.SetLimitsRequest(name="alpha", limits=pb.TenantLimits(max_context_tokens=1)),
    "RotateKey": pb.RotateKeyRequest(name="alpha"),
    "GrantNamespace": pb.GrantNamespaceRequest(tenant="beta", namespace="team-a"),
    "RevokeNamespace": pb.RevokeNamespaceRequest(tenant="alpha", namespace="team-a"),
}


def test_every_admin_rpc_needs_the_admin_key(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    try:
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        kb = adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
        adm.GrantNamespace(pb.GrantNamespaceRequest(tenant="alpha", namespace="team-a"))
        keys = {"tenant key": (kb, C.PERMISSION_DENIED), "no key": (None, C.UNAUTHENTICATED),
                "wrong key": ("pfx-" + "0" * 48, C.UNAUTHENTICATED),
                "admin key + 1 char": (ADMIN + "x", C.UNAUTHENTICATED)}
        tried = 0
        for rpc, req in ADMIN_RPCS.items():
            for who, (key, want) in keys.items():
                code, msg = code_of(lambda: getattr(d.admin(key), rpc)(req))
                assert code == want, (rpc, who, code, msg)
                tried += 1
            # malformed authorization metadata
            for value in ("Basic " + ADMIN, "Bearer", "Bearer" + ADMIN, ADMIN, "Bearer " + ADMIN +
                          " ", "Bearer  " + ADMIN, "Bearer " + ADMIN[:-1]):
                stub = d.admin(None)
                code, _ = code_of(lambda: getattr(stub, rpc)(
                    req, metadata=[("authorization", value)]))
                # a value ending in whitespace is a malformed HTTP/2 field (RFC 9113 8.2.1):
                # nghttp2 resets the stream (PROTOCOL_ERROR, which grpcio reports as INTERNAL)
                ok = {C.UNAUTHENTICATED, C.INTERNAL} if value.endswith(" ") else \
                    {C.UNAUTHENTICATED}
                assert code in ok, (rpc, value, code)
                tried += 1
        # the scheme's case does not matter (RFC 9110 11.1), as in the OpenAI API's header
        stub = d.admin(None)
        assert stub.ListTenants(pb.ListTenantsRequest(),
                                metadata=[("authorization", "bEARER " + ADMIN)]).tenants
        # nothing changed: the tenants, their keys, limits and grants are as they were
        tenants = {t.name: t for t in adm.ListTenants(pb.ListTenantsRequest()).tenants}
        assert sorted(tenants) == ["alpha", "beta"]
        assert list(tenants["alpha"].granted_namespaces) == ["team-a"]
        assert tenants["alpha"].limits.max_context_tokens == 0
        assert list(tenants["beta"].granted_namespaces) == []
        assert d.stub(ka).Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="hi"))).token_ids
        report("admin_key", requests_tried=tried)
    finally:
        assert d.stop() == 0


def test_admin_service_is_closed_without_an_admin_key(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir)  # single tenant, no keys, no admin key
    try:
        for rpc, req in ADMIN_RPCS.items():
            for key in (None, ADMIN):
                code, msg = code_of(lambda: getattr(d.admin(key), rpc)(req))
                assert code in (C.PERMISSION_DENIED, C.UNAUTHENTICATED), (rpc, key, code, msg)
    finally:
        assert d.stop() == 0
