"""Allocation failure on the request path: fail the N-th allocation, N = 1, 2, ...; a clean error
each time, no crash, no hang, no leak (issue 9).

HOW. prefixd runs with libpd_failalloc.so preloaded (pd_failalloc.c: it fails exactly the N-th
heap allocation the process makes after the test arms it, once, and records where), on
tiny-q5_1 (16 KiB blocks; a device tier of 64 blocks, no host or disk tier), in multi-tenant
mode with tenants alpha and beta, one persistent gRPC connection each. For N = 1, 2, ... the
test arms N and sends one round of requests through the whole path:

    Tokenize (alpha); alpha's and beta's Generate at once (alpha's prompt is a 48-token shared
    prefix, warmed beforehand, and a tail: authentication, the queue, admission, the prefix
    match with a copy-on-write block, chunked prefill (--max-batch-tokens 16), batched decode,
    12 streamed tokens each); Warm (alpha: the shared prefix and another tail); Lookup; Stats;
    Detokenize; ListPrefixes; and the Admin service (the tenant file, rewritten and renamed on
    every change): ListTenants, SetLimits (beta's, unchanged), CreateTenant then DeleteTenant of
    a scratch tenant.

Each call must succeed with exactly the output of an unarmed round, or fail with
RESOURCE_EXHAUSTED, INTERNAL or UNAVAILABLE (the daemon closed the connection) and a message (an
INTERNAL that says "out of memory" or "I/O error" is a failed allocation misreported); no answer
within CALL_TIMEOUT seconds is a hang. Then, disarmed, the daemon must be alive and:
answer Health; give both Generates their reference tokens (nothing half-computed was left in the
cache); list exactly alpha and beta once a scratch tenant left behind (its DeleteTenant failed)
is deleted, with their keys still valid; after Evict(all) hold 0 blocks in every tier, for every tenant, with nothing queued or
running and no tenant request active (Stats and /metrics); and take a Warm that needs all 64
device blocks (no block or reservation leaked). The loop stops at the first N whose armed round
ran to its end without the failure firing: N is past the last allocation of the path.

LEAKS. The library counts live heap blocks (allocations minus frees). Every LIVE_EVERY rounds
the test closes its connections (each holds nghttp2 state that grows with the streams it
served), waits for the daemon to go quiet and reads the count: it must be what it was after the
calibration round, within LIVE_SLACK blocks, and the growth of each window of rounds is
reported, so a leak on an error path names its N. RssAnon is reported. At the end SIGTERM must
find no call in flight (the log's `draining ... in_flight=0`) and exit 0; with the ASan daemon
(`make asan`) the same loop runs with ASan's allocator behind the library
(ASAN_OPTIONS=verify_asan_link_order=0, so the preloaded library may come first), whose leak
check at exit covers every error path the loop took, and whose checks cover every use after
free or double free on them.

THE CLIENT. grpcio (1.66) sometimes misses a connection reset that comes just after it wrote a
request and waits for the deadline (when the daemon closes a connection whose read buffer it
could not allocate; a raw HTTP/2 client saw the connection end at once 100 times in 100): the
test's channels send a keepalive ping during calls, whose failed write makes grpcio notice. A
daemon that hangs a call still hangs it (the ping is answered), and a dead one fails Health.

WHAT IS NOT COUNTED, and why. (1) Allocations whose immediate caller is in libgomp
(PD_FAILALLOC_EXCLUDE=libgomp): libgomp's gomp_malloc ends the process when an allocation fails
("libgomp: Out of memory allocating 1568 bytes", exit 1), as soon as the loop reached the first
forward pass: memalign <- (libgomp) <- GOMP_parallel <- pd_matmul <- pd_llama_forward <- step <-
engine_main (every parallel region of the forward pass allocates its thread team: about 270 of
the round's allocations).
Nothing in prefixd can recover from that; what libgomp asks of others is still counted. (2) The
connection setup: every connection is opened before arming (connect_all), and one the daemon
closed is reopened disarmed; test_new_connection_survives_allocation_failure covers that path on
its own (it was a strict xfail until on_connection accepted and closed a connection it had no
memory for, instead of leaving it unaccepted, after which libuv stopped accepting altogether).

SIZES. Full (PD_STRESS_SCALE=full, label slow): every N. CI (label unit): every N if the rounds
fit in PD_FAILALLOC_SECONDS (60 s by default, measured on an unarmed round), else every k-th N
from a random offset (printed; the run's figures say which N ran), always ending with the round
past the end of the path. PD_FAILALLOC_ONLY=57,58 runs only those N (to reproduce a failure).

TLS. Both tests run twice: in plaintext, and with the daemon serving TLS (--tls-cert; the
channels are grpcio's secure ones), where OpenSSL's own allocations (the handshake's, the
sessions', every record's) are on the path too. A failed one ends its connection (UNAVAILABLE)
and nothing else; the same rules hold.
"""
import concurrent.futures
import math
import os
import random
import re
import sys
import time
import urllib.request

import grpc
import pytest

import failalloc
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from pd_pki import make_pki  # noqa: E402
from pd_harness import (CHANNEL_OPTIONS, FULL, Daemon, Keyed, ids_prompt, pb, pb_grpc, report,
                        tier)

ADMIN = "admin-key-for-the-fault-tests-0123456"
CALL_TIMEOUT = 20.0
ALLOWED = {"RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE"}
# keepalive pings during calls: see THE CLIENT above
KEEPALIVE = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000)]
EXCLUDE = "libgomp"
SHARED = [10 + (i * 37) % 480 for i in range(48)]
TAIL_GEN, TAIL_WARM = [7, 8, 9, 11, 12, 13, 14, 15, 16, 17], [5, 6, 4, 3]
BETA = [400 - i for i in range(30)]
FULL_POOL = [20 + (i * 11) % 470 for i in range(63 * 16)]  # 63 blocks + 1 reserved: all 64
TOKENIZE_TEXT = "the shared system prompt of the fault tests"
LIVE_EVERY = 25  # rounds between two counts of live heap blocks
LIVE_SLACK = 8  # blocks the daemon may keep for good after the first rounds (array growth)


def rpc(fn):
    """(status name, result or details) of one call."""
    try:
        return "OK", fn()
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


class NoFinal(Exception):
    pass


def generate(stub, ids, timeout=CALL_TIMEOUT, wait=False):
    toks, final = [], None
    req = pb.GenerateRequest(prompt=ids_prompt(ids), max_tokens=12,
                             sampling=pb.SamplingParams(ignore_eos=True))
    for m in stub.Generate(req, timeout=timeout, wait_for_ready=wait):
        toks += list(m.token_ids)
        if m.finish_reason:
            final = m
    if final is None:
        raise NoFinal("the stream ended OK without its final message")
    return toks


@pytest.fixture(params=["plaintext", "tls"])
def transport(request, tmp_path_factory):
    """None (plaintext), or the test certificates (the daemon serves TLS)."""
    return make_pki(tmp_path_factory.mktemp("pki")) if request.param == "tls" else None


def tls_args(pki):
    return ["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"]] if pki else []


def open_channel(target, pki, options):
    if not pki:
        return grpc.insecure_channel(target, options=options)
    with open(pki["ca.pem"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(target, creds, options=options)


class Loop:
    """One daemon under the library, its stubs, the reference outputs and the checks."""

    def __init__(self, model, data_dir, lib, pki=None):
        self.pki = pki
        self.ctl = failalloc.Control(os.path.join(data_dir, "failalloc.ctl"))
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = {"LD_PRELOAD": lib, "PD_FAILALLOC_CTL": self.ctl.path,
               "PD_FAILALLOC_EXCLUDE": EXCLUDE, "PREFIXD_METRICS_LISTEN": "127.0.0.1:0",
               "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}
        self.d = Daemon(model, data_dir, admin_key=ADMIN, env=env,
                        extra=["--kv-cache-mb", "1", "--host-cache-mb", "0", "--disk-cache-mb",
                               "0", "--max-batch-tokens", "16", "--drain-timeout", "5",
                               *tls_args(pki)])
        assert self.ctl.loaded(), "libpd_failalloc.so is not loaded in the daemon"
        m = re.search(r"metrics_port=(\d+)", self.d.log_text())
        self.metrics_url = f"http://127.0.0.1:{m.group(1)}/metrics"
        self.sym = failalloc.Symbolizer(self.d.pid)
        adm = Keyed(pb_grpc.AdminStub(self.channel()), ADMIN)
        self.keys = (adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key,
                     adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key)
        self.reconnect()
        self.pool = concurrent.futures.ThreadPoolExecutor(2)
        self.prepare()
        self.ref = {"tok": list(self.a.Tokenize(pb.TokenizeRequest(
                        prompt=pb.Prompt(text=TOKENIZE_TEXT))).token_ids),
                    "gen_a": generate(self.a, SHARED + TAIL_GEN),
                    "gen_b": generate(self.b, BETA)}
        self.ref["detok"] = self.a.Detokenize(pb.DetokenizeRequest(
            token_ids=self.ref["tok"])).text
        self.check_idle("reference")

    def reconnect(self):
        """Closes every connection and opens new ones (stubs for the admin, alpha and beta)."""
        for ch in self.d.channels:
            ch.close()
        self.d.channels = []
        self.admin, self.a, self.b = (self.d.stub(k, channel=self.channel())
                                      for k in (ADMIN,) + self.keys)
        self.tenants = Keyed(pb_grpc.AdminStub(self.channel()), ADMIN)

    def channel(self):
        ch = open_channel(self.d.target, self.pki, CHANNEL_OPTIONS + KEEPALIVE)
        self.d.channels.append(ch)
        return ch

    def connect_all(self):
        """Disarmed: every channel connected, so the armed round opens no connection (grpcio
        connects lazily, and a channel whose connection the daemon closed waits out a backoff
        before it connects again, failing calls at once meanwhile). The standard health check
        (an empty request, no key) on each, waiting for it to be ready. A check sent on a
        connection that the daemon is closing at that moment (it closes one whose write failed
        to allocate: allowed) fails UNAVAILABLE "Socket closed", wait_for_ready or not: it is
        sent again, on the channel's next connection, a few times at most."""
        for ch in self.d.channels:
            check = ch.unary_unary("/grpc.health.v1.Health/Check")
            for attempt in range(4):
                try:
                    check(b"", timeout=CALL_TIMEOUT, wait_for_ready=True)
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                        raise

    def live_blocks(self):
        """Live heap blocks with no client connected (each connection holds nghttp2's state,
        which grows with the streams it served until it closes): the daemon's own memory."""
        self.reconnect()
        self.settle()
        live = self.ctl.live()
        self.connect_all()
        return live

    def prepare(self):
        """The state every round starts from: the shared prefix cached for alpha."""
        self.a.Warm(pb.WarmRequest(prompt=ids_prompt(SHARED)), timeout=CALL_TIMEOUT,
                    wait_for_ready=True)

    # -- the armed round ------------------------------------------------------------------------

    def round(self):
        """One round of requests; returns {call: (status, detail)} and problems found."""
        out, problems = {}, []
        out["Tokenize"] = rpc(lambda: list(self.a.Tokenize(
            pb.TokenizeRequest(prompt=pb.Prompt(text=TOKENIZE_TEXT)),
            timeout=CALL_TIMEOUT).token_ids))
        fa = self.pool.submit(rpc, lambda: generate(self.a, SHARED + TAIL_GEN))
        fb = self.pool.submit(rpc, lambda: generate(self.b, BETA))
        for name, f in (("Generate", fa), ("Generate(beta)", fb)):
            try:
                out[name] = f.result()
            except NoFinal as e:
                out[name] = ("NO_FINAL", str(e))
        out["Warm"] = rpc(lambda: self.a.Warm(pb.WarmRequest(
            prompt=ids_prompt(SHARED + TAIL_WARM)), timeout=CALL_TIMEOUT).prompt_tokens)
        out["Lookup"] = rpc(lambda: self.a.Lookup(pb.LookupRequest(
            prompt=ids_prompt(SHARED)), timeout=CALL_TIMEOUT).prompt_tokens)
        out["Stats"] = rpc(lambda: self.a.Stats(pb.StatsRequest(), timeout=CALL_TIMEOUT).requests)
        out["Detokenize"] = rpc(lambda: self.a.Detokenize(pb.DetokenizeRequest(
            token_ids=self.ref["tok"]), timeout=CALL_TIMEOUT).text)
        out["ListPrefixes"] = rpc(lambda: len(self.a.ListPrefixes(pb.ListPrefixesRequest(),
                                                                  timeout=CALL_TIMEOUT).prefixes))
        out["ListTenants"] = rpc(lambda: sorted(t.name for t in self.tenants.ListTenants(
            pb.ListTenantsRequest(), timeout=CALL_TIMEOUT).tenants))
        out["SetLimits"] = rpc(lambda: self.tenants.SetLimits(pb.SetLimitsRequest(
            name="beta", limits=pb.TenantLimits()), timeout=CALL_TIMEOUT) and None)
        out["CreateTenant"] = rpc(lambda: bool(self.tenants.CreateTenant(
            pb.CreateTenantRequest(name="scratch"), timeout=CALL_TIMEOUT).api_key))
        out["DeleteTenant"] = rpc(lambda: self.tenants.DeleteTenant(
            pb.DeleteTenantRequest(name="scratch"), timeout=CALL_TIMEOUT) and None)
        if out["CreateTenant"][0] != "OK" and out["DeleteTenant"][0] == "NOT_FOUND":
            out["DeleteTenant"] = ("OK", None)  # the scratch tenant was never created
        want = {"Tokenize": self.ref["tok"], "Generate": self.ref["gen_a"],
                "Generate(beta)": self.ref["gen_b"], "Warm": len(SHARED) + len(TAIL_WARM),
                "Lookup": len(SHARED), "Detokenize": self.ref["detok"],
                "ListTenants": ["alpha", "beta"], "CreateTenant": True}
        for name, (status, got) in out.items():
            if status == "OK":
                if name in want and got != want[name]:
                    problems.append(f"{name} succeeded with a wrong result: {got} != {want[name]}")
            elif status == "DEADLINE_EXCEEDED":
                problems.append(f"{name} hung: no answer in {CALL_TIMEOUT:.0f} s")
            elif status not in ALLOWED:
                problems.append(f"{name} ended {status}: {got}")
            elif not got:
                problems.append(f"{name} ended {status} without a message")
            elif status == "INTERNAL" and re.search(r"out of memory|I/O error", got):
                # running out of memory is RESOURCE_EXHAUSTED, and nothing here fails to write
                problems.append(f"{name} ended {status} for a failed allocation: {got}")
        return out, problems

    def settle(self, limit=5.0):
        """Waits until the daemon makes no allocation for 30 ms (it finishes a round's cleanup
        after the last answer). Not a timing assertion: it only bounds the wait."""
        end, quiet = time.monotonic() + limit, 0
        last = (self.ctl.total(), self.ctl.live())
        while quiet < 3 and time.monotonic() < end:
            time.sleep(0.01)
            now = (self.ctl.total(), self.ctl.live())
            quiet = quiet + 1 if now == last else 0
            last = now

    # -- the checks after a round ---------------------------------------------------------------

    def metrics(self):
        with urllib.request.urlopen(self.metrics_url, timeout=CALL_TIMEOUT) as r:
            text = r.read().decode()
        vals = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                vals[k] = float(v)
        return vals

    def check_idle(self, n):
        """Disarmed, after a round: the daemon serves, forgot nothing, leaked nothing."""
        assert self.d.alive(), f"N={n}: the daemon died"
        self.connect_all()
        h = self.a.Health(pb.HealthRequest(), timeout=CALL_TIMEOUT, wait_for_ready=True)
        assert h.status == pb.HealthResponse.STATUS_SERVING, f"N={n}: {h}"
        got_a = generate(self.a, SHARED + TAIL_GEN, wait=True)
        got_b = generate(self.b, BETA, wait=True)
        if hasattr(self, "ref"):
            assert got_a == self.ref["gen_a"], f"N={n}: alpha's tokens changed: {got_a}"
            assert got_b == self.ref["gen_b"], f"N={n}: beta's tokens changed: {got_b}"
        names = sorted(t.name for t in self.tenants.ListTenants(
            pb.ListTenantsRequest(), timeout=CALL_TIMEOUT).tenants)
        if "scratch" in names:  # a DeleteTenant that failed: it must work now
            self.tenants.DeleteTenant(pb.DeleteTenantRequest(name="scratch"), timeout=CALL_TIMEOUT)
            names.remove("scratch")
        assert names == ["alpha", "beta"], f"N={n}: tenants {names}"
        self.evict_all(n)
        w = self.a.Warm(pb.WarmRequest(prompt=ids_prompt(FULL_POOL)), timeout=CALL_TIMEOUT)
        assert w.prompt_tokens == len(FULL_POOL), f"N={n}: {w}"
        self.evict_all(n)
        self.prepare()

    def evict_all(self, n):
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            self.admin.Evict(pb.EvictRequest(all=True), timeout=CALL_TIMEOUT)
            st = self.admin.Stats(pb.StatsRequest(), timeout=CALL_TIMEOUT)
            m = self.metrics()
            busy = (st.queue_depth, m["prefixd_running_sequences"],
                    sum(v for k, v in m.items() if k.startswith("prefixd_tenant_active_requests")))
            used = [tier(st, t).blocks_used for t in (pb.TIER_DEVICE, pb.TIER_HOST, pb.TIER_DISK)]
            tenants = [(t.tenant, t.blocks.device, t.blocks.host, t.blocks.disk)
                       for t in st.tenants]
            clean = (busy == (0, 0, 0) and used == [0, 0, 0]
                     and all(sum(t[1:]) == 0 for t in tenants))
            if clean:
                return
            # a cancelled sequence is reaped at the engine's next step: give it a moment
            assert time.monotonic() < deadline, (
                f"N={n}: after Evict(all): queued/running/active {busy}, blocks by tier {used}, "
                f"by tenant {tenants}")
            time.sleep(0.02)

    def stop(self):
        self.pool.shutdown()
        rc = self.d.stop()
        self.ctl.close()
        return rc


def plan(count, t_round):
    """The N to try: every one, or (CI, when that does not fit the budget) every k-th."""
    only = os.environ.get("PD_FAILALLOC_ONLY")
    if only:
        return [int(x) for x in only.split(",")] + [count * 4 + 1000], 1, 0
    budget = float(os.environ.get("PD_FAILALLOC_SECONDS", "60"))
    stride = 1 if FULL else max(1, math.ceil(count * t_round * 1.2 / budget))
    offset = random.randrange(stride)
    return list(range(1 + offset, count * 4 + 1000, stride)), stride, offset


def test_every_allocation_of_the_request_path_can_fail(q51_model, data_dir, failalloc_lib,
                                                        transport):
    L = Loop(q51_model, data_dir, failalloc_lib, transport)
    ctl = L.ctl
    # calibrate: one round armed past its end counts the allocations of the path
    t0 = time.monotonic()
    ctl.arm(1 << 60)
    out, problems = L.round()
    L.settle()
    ctl.disarm()
    count, exempt = ctl.count(), ctl.exempt()
    assert not problems and all(s == "OK" for s, _ in out.values()), (out, problems)
    L.check_idle("calibration")
    t_round = time.monotonic() - t0
    live0, rss0 = L.live_blocks(), L.d.rss_kb("RssAnon")
    ns, stride, offset = plan(count, t_round)
    print(f"path: {count} counted allocations, {exempt} exempt ({EXCLUDE}); round {t_round:.3f} s;"
          f" N from {ns[0]} every {stride}")
    statuses, messages, fired_where, live_windows, failures = {}, {}, {}, [], []
    live_prev, since = live0, None
    n_fired = n_tested = 0
    end_n = None
    for n in ns:
        ctl.arm(n)
        out, problems = L.round()
        L.settle()
        ctl.disarm()
        fired, rec = ctl.fired(), ctl.record()
        n_tested += 1
        where = L.sym.stack(rec["frames"][:7]) if fired else []
        if problems:
            failures.append({"N": n, "problems": problems, "allocation": rec["kind"],
                             "size": rec["size"], "stack": where})
        for call, (status, got) in out.items():
            statuses.setdefault(call, {}).setdefault(status, 0)
            statuses[call][status] += 1
            if status != "OK":
                messages.setdefault(f"{status}: {got}", n)
        if not L.d.alive():
            raise AssertionError(f"N={n}: the daemon died (exit {L.d.proc.poll()}) after a failed "
                                 f"{rec['kind']}({rec['size']}) at {where}\n" +
                                 L.d.log_text()[-3000:])
        try:
            L.check_idle(n)
        except Exception as e:
            raise AssertionError(f"N={n}: after a failed {rec['kind']}({rec['size']}) at "
                                 f"{where}: {e}") from e
        since = since or n
        if n_tested % LIVE_EVERY == 0:  # which rounds left blocks behind
            live = L.live_blocks()
            live_windows.append((since, n, live - live_prev))
            live_prev, since = live, None
        if fired:
            n_fired += 1
            site = where[0].split(" (")[0] if where else "?"  # the failed allocation's caller
            fired_where[site] = fired_where.get(site, 0) + 1
        else:
            end_n = n
            break
    assert end_n is not None, f"every N up to {ns[-1]} fired: the path never ended"
    live_end, rss_end = L.live_blocks(), L.d.rss_kb("RssAnon")
    if since:
        live_windows.append((since, end_n, live_end - live_prev))
    rc = L.stop()
    log = L.d.log_text()
    m = re.search(r'msg="draining".*in_flight=(\d+)', log)
    report("failalloc", transport="tls" if transport else "plaintext", path_allocations=count, exempt_allocations=exempt, stride=stride,
           offset=offset, tested=n_tested, fired=n_fired, end_n=end_n, statuses=statuses,
           first_n_by_message=messages, sites=fired_where,
           failure_sites=len(fired_where), live_blocks=[live0, live_end],
           live_by_window=live_windows, rss_anon_kb=[rss0, rss_end], problems=failures[:20])
    assert not failures, "\n".join(f"N={f['N']}: {f['problems']} (failed {f['allocation']}"
                                   f"({f['size']}) at {f['stack']})" for f in failures[:20])
    assert live_end - live0 <= LIVE_SLACK, (
        f"live heap blocks grew from {live0} to {live_end}; by rounds (first N, last N, "
        f"growth): {live_windows}")
    assert m and m.group(1) == "0", f"calls still in flight at SIGTERM: {m and m.group(0)}"
    assert rc == 0, f"prefixd exited {rc} (under ASan: a leak report)\n{log[-3000:]}"


def test_new_connection_survives_allocation_failure(q51_model, data_dir, failalloc_lib,
                                                    transport):
    """The connection-setup path, which the loop above leaves out: for N = 1, 2, ... a new
    connection's first call (Tokenize) with the N-th allocation failing must end cleanly, and a
    connection opened afterwards must work."""
    ctl = failalloc.Control(os.path.join(data_dir, "failalloc.ctl"))
    asan = os.environ.get("ASAN_OPTIONS", "")
    d = Daemon(q51_model, data_dir, extra=["--host-cache-mb", "0", "--disk-cache-mb", "0",
                                           *tls_args(transport)],
               env={"LD_PRELOAD": failalloc_lib, "PD_FAILALLOC_CTL": ctl.path,
                    "PD_FAILALLOC_EXCLUDE": EXCLUDE,
                    "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
    req = pb.TokenizeRequest(prompt=pb.Prompt(text=TOKENIZE_TEXT))

    def fresh_call(timeout, wait):
        ch = open_channel(d.target, transport, [("grpc.use_local_subchannel_pool", 1)])
        try:
            return rpc(lambda: list(Keyed(pb_grpc.PrefixdStub(ch), None).Tokenize(
                req, timeout=timeout, wait_for_ready=wait).token_ids))
        finally:
            ch.close()

    try:
        ref = fresh_call(CALL_TIMEOUT, True)
        assert ref[0] == "OK", ref
        deadline = time.monotonic() + (600 if FULL else 60)
        statuses = {}
        for n in range(1, 2000):
            ctl.arm(n)
            status, got = fresh_call(5.0, False)
            statuses[status] = statuses.get(status, 0) + 1
            ctl.disarm()
            fired, rec = ctl.fired(), ctl.record()
            where = d.alive() and failalloc.Symbolizer(d.pid).stack(rec["frames"][:5])
            assert d.alive(), f"N={n}: the daemon died"
            assert status == "OK" and got == ref[1] or status in ALLOWED and got, \
                f"N={n}: {status} {got} (failed {rec['kind']}({rec['size']}) at {where})"
            after = fresh_call(10.0, True)
            assert after == ref, f"N={n}: a new connection afterwards got {after} " \
                                 f"(failed {rec['kind']}({rec['size']}) at {where})"
            if not fired or time.monotonic() > deadline:
                break
        report("failalloc_connection", transport="tls" if transport else "plaintext", tested=n,
               statuses=statuses, ended=not fired)
    finally:
        assert d.stop() == 0
        ctl.close()
