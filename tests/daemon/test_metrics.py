"""The metrics endpoint end to end: a real prefixd with --metrics-listen 127.0.0.1:0, scraped
with urllib and parsed by prometheus_client's own text parser (not ours), compared with what the
Stats RPC says at the same moment, and watched while it moves. Also /healthz and /readyz through
a drain, and clients that send garbage, too much, too slowly, or too many connections: each gets
its 4xx or is closed, and the daemon goes on serving gRPC and HTTP."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Daemon, generate, pb, raw, status_of

ADMIN = "admin-key-for-metrics-tests-0123456789"
TIERS = ("device", "host", "disk")


def metrics_port(d):
    m = re.search(r'msg="prefixd ready".* metrics_port=(\d+)', d.log_text())
    assert m, d.log_text()
    return int(m.group(1))


def start(model, data_dir, extra=(), **kw):
    return Daemon(model, data_dir, extra=["--metrics-listen", "127.0.0.1:0", *extra], **kw)


def http_get(port, path, method="GET"):
    """(status, headers, body) of one request through urllib."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def scrape(port):
    """{(sample name, frozenset of labels): value} of one /metrics scrape, and the families."""
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(body))
    samples = {}
    for fam in families:
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, {f.name: f for f in families}


def val(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def q51_model():
    tiny = os.environ.get("PD_TINY_MODEL")
    path = tiny and os.path.join(os.path.dirname(tiny), "tiny-q5_1.gguf")
    if not path or not os.path.exists(path):
        pytest.skip("tiny-q5_1.gguf not built")
    return path


def test_metrics_match_stats_and_move(tiny_model, data_dir):
    d = start(tiny_model, data_dir, admin_key=ADMIN)
    try:
        port = metrics_port(d)
        assert re.search(r" metrics=127\.0\.0\.1:\d+ ", d.log_text())
        adm = d.admin(ADMIN)
        keys = {n: adm.CreateTenant(pb.CreateTenantRequest(name=n)).api_key
                for n in ("alpha", "beta")}
        a, b = d.stub(keys["alpha"]), d.stub(keys["beta"])
        prompt = pb.Prompt(text="a system prompt that both turns share. " * 8)
        generate(a, prompt, max_tokens=6, sampling=pb.SamplingParams(ignore_eos=True))
        generate(a, prompt, max_tokens=6, sampling=pb.SamplingParams(ignore_eos=True))
        generate(b, pb.Prompt(text="beta asks something else " * 3), max_tokens=4,
                 sampling=pb.SamplingParams(ignore_eos=True))

        # the storage worker writes hit blocks to disk in the background (second-use): the
        # comparison waits until it is done, so Stats and the scrape see the same tiers
        deadline, st = time.time() + 30, None
        while True:
            prev, st = st, d.stub(ADMIN).Stats(pb.StatsRequest())
            if (prev is not None and st.storage.transfers_in_flight == 0 and
                    prev.storage == st.storage and list(prev.tiers) == list(st.tiers)):
                break
            assert time.time() < deadline, st.storage
            time.sleep(0.1)
        m, fams = scrape(port)
        # the families are typed and documented
        assert fams["prefixd_cache_hit_tokens"].type == "counter"
        assert fams["prefixd_tier_blocks"].type == "gauge"
        assert fams["prefixd_time_to_first_token_seconds"].type == "histogram"
        assert all(f.documentation for f in fams.values())
        # the same numbers as Stats
        assert st.hit_tokens > 0
        assert val(m, "prefixd_cache_hit_tokens_total") == st.hit_tokens
        assert val(m, "prefixd_cache_query_tokens_total") == st.query_tokens
        assert val(m, "prefixd_requests_total") == st.requests == 3
        assert val(m, "prefixd_queue_depth") == st.queue_depth
        assert val(m, "prefixd_kv_bytes_per_token") == st.kv_bytes_per_token
        for t in st.tiers:
            name = TIERS[t.tier - 1]
            assert val(m, "prefixd_tier_blocks", tier=name) == t.blocks_used
            assert val(m, "prefixd_tier_capacity_blocks", tier=name) == t.blocks_capacity
            assert val(m, "prefixd_tier_bytes", tier=name) == t.bytes_used
            assert val(m, "prefixd_tier_enabled", tier=name) == (0 if t.disabled else 1)
        assert val(m, "prefixd_tier_blocks", tier="device") > 0
        assert {t.tenant for t in st.tenants} == {"alpha", "beta"}
        for t in st.tenants:
            assert val(m, "prefixd_tenant_requests_total", tenant=t.tenant) == t.requests
            assert val(m, "prefixd_tenant_cache_hit_tokens_total", tenant=t.tenant) == t.hit_tokens
            assert val(m, "prefixd_tenant_cache_query_tokens_total",
                       tenant=t.tenant) == t.query_tokens
            for name, n in zip(TIERS, (t.blocks.device, t.blocks.host, t.blocks.disk)):
                assert val(m, "prefixd_tenant_blocks", tenant=t.tenant, tier=name) == n
        assert val(m, "prefixd_tenant_cache_hit_tokens_total", tenant="alpha") > 0
        s = st.storage
        assert val(m, "prefixd_spilled_blocks_total", tier="host") == s.spilled_to_host_blocks
        assert val(m, "prefixd_disk_writes_total") == s.disk_writes
        assert val(m, "prefixd_write_through_blocks_total") == s.write_through_blocks
        # histograms: one observation per finished Generate, cumulative buckets
        for h in ("prefixd_queue_wait_seconds", "prefixd_time_to_first_token_seconds",
                  "prefixd_time_per_output_token_seconds"):
            assert val(m, h + "_count") == 3
            buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                             if k[0] == h + "_bucket")
            assert buckets[-1] == (float("inf"), 3)
            assert all(x[1] <= y[1] for x, y in zip(buckets, buckets[1:]))
            assert val(m, h + "_sum") >= 0
        assert val(m, "prefixd_generated_tokens_total") == 6 + 6 + 4
        ok_before = val(m, "prefixd_rpcs_total", code="OK")
        assert ok_before >= 3 + 2 + 1  # 3 Generate, 2 CreateTenant, 1 Stats
        assert val(m, "prefixd_uptime_seconds") > 0

        # it moves: a hit, a refused request, a bad key
        generate(a, prompt, max_tokens=3, sampling=pb.SamplingParams(ignore_eos=True))
        with pytest.raises(grpc.RpcError) as e:
            generate(a, pb.Prompt(text=""), max_tokens=1)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError):
            d.stub("pfx-not-a-key").Stats(pb.StatsRequest())
        m2, _ = scrape(port)
        st2 = d.stub(ADMIN).Stats(pb.StatsRequest())
        assert val(m2, "prefixd_requests_total") == st2.requests == 4
        assert val(m2, "prefixd_cache_hit_tokens_total") == st2.hit_tokens > st.hit_tokens
        assert val(m2, "prefixd_cache_query_tokens_total") > val(m, "prefixd_cache_query_tokens_total")
        assert val(m2, "prefixd_tenant_requests_total", tenant="alpha") == 3
        assert val(m2, "prefixd_generated_tokens_total") == 16 + 3
        assert val(m2, "prefixd_time_to_first_token_seconds_count") == 4
        assert val(m2, "prefixd_rpcs_total", code="OK") == ok_before + 1  # the Generate
        assert val(m2, "prefixd_rpcs_total", code="INVALID_ARGUMENT") == 1
        assert val(m2, "prefixd_rpcs_total", code="UNAUTHENTICATED") == 1
        # a scrape is not an RPC (only st2's Stats came in between)
        m3, _ = scrape(port)
        assert val(m3, "prefixd_rpcs_total", code="OK") == val(m2, "prefixd_rpcs_total", code="OK") + 1
    finally:
        assert d.stop() == 0


def test_storage_counters_match_stats_after_spills(q51_model, data_dir):
    d = start(q51_model, data_dir, extra=["--kv-cache-mb", "1", "--disk-write", "always"])
    try:
        port = metrics_port(d)
        s = d.stub()
        docs = [[10 + i] + [5 + (i * 7 + j * 13) % 490 for j in range(299)] for i in range(6)]
        for ids in docs:  # 6 x 19 blocks through a device tier of 64: spills to host
            generate(s, pb.Prompt(tokens=pb.TokenIds(ids=ids)), max_tokens=2,
                     sampling=pb.SamplingParams(ignore_eos=True))
        generate(s, pb.Prompt(tokens=pb.TokenIds(ids=docs[0])), max_tokens=2,
                 sampling=pb.SamplingParams(ignore_eos=True))
        deadline = time.time() + 30
        while s.Stats(pb.StatsRequest()).storage.transfers_in_flight and time.time() < deadline:
            time.sleep(0.05)
        st = s.Stats(pb.StatsRequest())
        m, _ = scrape(port)
        g = st.storage
        assert g.spilled_to_host_blocks > 0 and g.disk_writes > 0
        assert val(m, "prefixd_spilled_blocks_total", tier="host") == g.spilled_to_host_blocks
        assert val(m, "prefixd_spilled_blocks_total", tier="disk") == g.spilled_to_disk_blocks
        assert val(m, "prefixd_restored_blocks_total", tier="host") == g.restored_from_host_blocks
        assert val(m, "prefixd_restored_blocks_total", tier="disk") == g.restored_from_disk_blocks
        assert val(m, "prefixd_spill_bytes_total") == g.spill_bytes
        assert val(m, "prefixd_restore_bytes_total") == g.restore_bytes
        for name, n in zip(TIERS, (g.dropped_blocks.device, g.dropped_blocks.host,
                                   g.dropped_blocks.disk)):
            assert val(m, "prefixd_dropped_blocks_total", tier=name) == n
        assert val(m, "prefixd_disk_writes_total") == g.disk_writes
        assert val(m, "prefixd_disk_write_bytes_total") == g.disk_write_bytes
        assert val(m, "prefixd_write_through_blocks_total") == g.write_through_blocks
        assert val(m, "prefixd_write_filtered_blocks_total") == g.write_filtered_blocks
        assert val(m, "prefixd_disk_checksum_failures_total") == g.checksum_failures
        assert val(m, "prefixd_restore_read_failures_total") == g.read_failures
        assert val(m, "prefixd_disk_map_full_retries_total") == g.map_full_retries
        assert val(m, "prefixd_restore_decisions_total", choice="restore") == g.restores_chosen
        assert val(m, "prefixd_restore_decisions_total", choice="recompute") == g.recomputes_chosen
        assert val(m, "prefixd_disk_records") == g.disk_records
        assert val(m, "prefixd_disk_direct_io") == 1  # the data directory takes O_DIRECT here
        assert val(m, "prefixd_disk_read_races_total") == 0  # one reader: nothing to race
        for t in st.tiers:
            assert val(m, "prefixd_tier_blocks", tier=TIERS[t.tier - 1]) == t.blocks_used
    finally:
        assert d.stop() == 0


def test_healthz_readyz_through_a_drain(tiny_model, data_dir):
    d = start(tiny_model, data_dir, extra=["--drain-timeout", "20"])
    port = metrics_port(d)
    assert http_get(port, "/healthz")[:3:2] == (200, "ok\n")
    assert http_get(port, "/readyz")[:3:2] == (200, "ready\n")
    assert http_get(port, "/healthz", method="HEAD")[0] == 200
    s = d.stub()
    got, streaming = {}, threading.Event()

    def run():  # a long stream that keeps the drain going
        try:
            for msg in s.Generate(pb.GenerateRequest(
                    prompt=pb.Prompt(text="long story " * 10), max_tokens=1900,
                    sampling=pb.SamplingParams(ignore_eos=True)), timeout=120):
                streaming.set()
                if msg.finish_reason:
                    got["final"] = msg
        except grpc.RpcError as e:
            got["e"] = e
    scrapes = {"ok": 0, "other": []}

    def scrape_until_gone():  # scrapes in flight while the daemon drains and exits
        while d.proc.poll() is None:
            try:
                status = http_get(port, "/metrics")[0]
                if status == 200:
                    scrapes["ok"] += 1
                elif status != 503:  # 503: shutting down
                    scrapes["other"].append(status)
            except (ConnectionError, urllib.error.URLError, socket.timeout):
                return
    t = threading.Thread(target=run)
    t.start()
    assert streaming.wait(30)
    scraper = threading.Thread(target=scrape_until_gone)
    scraper.start()
    d.proc.send_signal(signal.SIGTERM)
    deadline, ready = time.time() + 20, 200
    while ready != 503 and time.time() < deadline:
        ready, _, body = http_get(port, "/readyz")
    assert ready == 503 and body == "draining\n"
    t.join(120)
    assert d.proc.wait(60) == 0
    scraper.join(30)
    assert scrapes["ok"] > 0 and not scrapes["other"], scrapes
    # the stream finished, or (on a loaded machine) the 20 s drain timeout ended it: UNAVAILABLE,
    # "the server is shutting down"
    assert "final" in got or (got["e"].code() == grpc.StatusCode.UNAVAILABLE and
                              "shutting down" in got["e"].details()), got


def test_bad_clients_get_4xx_and_the_daemon_keeps_serving(tiny_model, data_dir):
    d = start(tiny_model, data_dir)
    try:
        port = metrics_port(d)
        s = d.stub()
        assert status_of(raw(port, b"garbage\r\n\r\n")) == 400
        assert status_of(raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20)) == 400
        big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert status_of(raw(port, big)) == 431
        many = b"GET /metrics HTTP/1.1\r\n" + b"X-H: 1\r\n" * 2000 + b"\r\n"
        assert status_of(raw(port, many)) == 431
        assert status_of(raw(port, b"GET /" + b"m" * 2000 + b" HTTP/1.1\r\n\r\n")) == 414
        body = b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        assert status_of(raw(port, body)) == 400
        chunked = b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert status_of(raw(port, chunked)) == 400
        smuggle = (b"GET /metrics HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
                   b"\r\n\r\n0\r\n\r\n")
        assert status_of(raw(port, smuggle)) == 400
        resp = raw(port, b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status_of(resp) == 405 and b"Allow: GET, HEAD" in resp
        assert http_get(port, "/nothing-here")[0] == 404
        # keep-alive and pipelining: three requests in one write, three answers in order
        resp = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", resp)
        assert codes == [b"200", b"200", b"200"], resp[:300]
        assert resp.rstrip().endswith(b"ready")
        # HEAD /metrics: the length, no body
        status, headers, text = http_get(port, "/metrics", method="HEAD")
        assert status == 200 and int(headers["Content-Length"]) > 1000 and text == ""
        # still serving both protocols
        assert http_get(port, "/healthz")[0] == 200
        generate(s, pb.Prompt(text="still here"), max_tokens=2)
        scrape(port)
    finally:
        assert d.stop() == 0


def test_slow_and_idle_clients_are_bounded(tiny_model, data_dir):
    d = start(tiny_model, data_dir)
    held = []
    try:
        port = metrics_port(d)
        s = d.stub()
        # a request that never ends does not block others, and gets 408 after 10 s
        slow = socket.create_connection(("127.0.0.1", port), timeout=20)
        slow.sendall(b"GET /metr")
        t0 = time.time()
        assert http_get(port, "/healthz")[0] == 200
        scrape(port)
        generate(s, pb.Prompt(text="meanwhile"), max_tokens=2)
        out = b""
        while True:
            chunk = slow.recv(4096)
            if not chunk:
                break
            out += chunk
        assert status_of(out) == 408 and 8 < time.time() - t0 < 20
        slow.close()
        time.sleep(0.5)  # the server sees the earlier connections' ends
        # idle connections are capped: past the limit a new one is closed at once
        for _ in range(64):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        extra.close()
        generate(s, pb.Prompt(text="gRPC is not affected"), max_tokens=2)
        for h in held:
            h.close()
        held.clear()
        deadline = time.time() + 10
        while time.time() < deadline:  # the slots come back once the server saw the closes
            try:
                if http_get(port, "/healthz")[0] == 200:
                    break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.1)
        assert http_get(port, "/healthz")[0] == 200
    finally:
        for h in held:
            h.close()
        assert d.stop() == 0


def test_metrics_listen_none_taken_and_flag_errors(tiny_model, data_dir, monkeypatch):
    monkeypatch.delenv("PREFIXD_METRICS_LISTEN", raising=False)
    d = Daemon(tiny_model, data_dir, extra=["--metrics-listen", "none"])
    try:
        assert "metrics=none" in d.log_text() and "metrics_port=0" in d.log_text()
    finally:
        assert d.stop() == 0
    # the default address taken: a warning, and serving goes on. The test holds the port
    # itself: a daemon of a test running beside this one may have it for a while, and could let
    # it go just before ours starts
    squatter = socket.socket()
    deadline = time.time() + 120
    while True:
        try:
            squatter.bind(("127.0.0.1", 9464))
            squatter.listen(1)
            break
        except OSError:
            assert time.time() < deadline, "127.0.0.1:9464 stayed taken for 120 s"
            time.sleep(0.05)
    try:
        d = Daemon(tiny_model, data_dir)
        try:
            assert "no metrics endpoint" in d.log_text() and "metrics_port=0" in d.log_text()
            generate(d.stub(), pb.Prompt(text="fine"), max_tokens=1)
        finally:
            assert d.stop() == 0
    finally:
        squatter.close()
    # an address given explicitly must work, or prefixd does not start
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        for bad, rc in (("nonsense", 2), ("127.0.0.1:99999", 2), ("not-an-ip:80", 2),
                        (f"127.0.0.1:{taken.getsockname()[1]}", 1)):
            p = subprocess.run([os.environ["PREFIXD_BIN"], "--model", tiny_model, "--data-dir",
                                data_dir, "--listen", "127.0.0.1:0", "--unix", "none",
                                "--metrics-listen", bad],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == rc and "metrics" in p.stderr, (bad, p.stderr)
    finally:
        taken.close()


def test_cpu_threads_follow_a_busy_neighbour(tiny_long_model, data_dir):
    """--threads auto (0): prefixd_cpu_threads starts at the CPUs the process may use
    (prefixd_cpu_threads_allowed) and, while the engine computes beside a busy process, drops
    below them (the engine samples /proc once a second; two samples must agree), with a log line
    saying so."""
    d = start(tiny_long_model, data_dir, extra=["--threads", "0"])
    hog, stream = None, None
    try:
        port = metrics_port(d)
        m, fams = scrape(port)
        assert fams["prefixd_cpu_threads"].type == "gauge"
        allowed = val(m, "prefixd_cpu_threads_allowed")
        assert allowed >= 1 and val(m, "prefixd_cpu_threads") == allowed
        assert f" threads={int(allowed)} " in d.log_text()
        if allowed < 2 or allowed < len(os.sched_getaffinity(0)):
            return  # one CPU, or a quota that leaves room for the neighbour: nothing to give up
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        stream = d.stub().Generate(pb.GenerateRequest(
            prompt=pb.Prompt(text="count on and on"), sampling=pb.SamplingParams(ignore_eos=True)),
            timeout=60)
        drain = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
        drain.start()
        seen, deadline = allowed, time.time() + 20
        while seen >= allowed and time.time() < deadline:
            time.sleep(0.25)
            seen = val(scrape(port)[0], "prefixd_cpu_threads")
        assert 1 <= seen < allowed, (seen, allowed)
        assert 'msg="CPU threads changed"' in d.log_text()
    finally:
        if stream is not None:
            stream.cancel()
        if hog is not None:
            hog.kill()
            hog.wait()
        assert d.stop() == 0
