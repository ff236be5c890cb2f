"""Memory pressure, clients leaving at every stage of a request, and a disk that fills up.

The model is the synthetic tiny-q5_1 (1 KiB of KV per token, 16 KiB per block): with
--kv-cache-mb 1 --host-cache-mb 1 --disk-cache-mb 8 the tiers hold 64, 64 and 367 blocks, and a
300-token document takes 19 of them, so a few dozen documents fill every tier.
"""
import os
import random
import subprocess
import threading
import time

import grpc
import pytest

from h2wire import Wire
from pd_harness import Daemon, code_of, generate, ids_prompt, pb, report, scaled, tier

SMALL_TIERS = ["--kv-cache-mb", "1", "--host-cache-mb", "1", "--disk-cache-mb", "8"]


def doc(i, n_tokens=300):
    """Token ids of a distinct document (its first token names it)."""
    rng = random.Random(i)
    return [10 + i % 400] + [rng.randrange(5, 500) for _ in range(n_tokens - 1)]


def greedy(stub, ids, n=12, no_cache=False, timeout=120):
    _, out, final = generate(stub, ids_prompt(ids), max_tokens=n, timeout=timeout,
                             sampling=pb.SamplingParams(ignore_eos=True),
                             cache=pb.CacheOptions(no_cache=no_cache))
    return out, final


def reads_work(s, probe):
    """The read-only RPCs answer under pressure."""
    lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(probe)))
    assert lk.prompt_tokens == len(probe)
    st = s.Stats(pb.StatsRequest())
    for t in st.tiers:
        assert t.blocks_used <= t.blocks_capacity, t
    s.ListPrefixes(pb.ListPrefixesRequest(page_size=50))
    return st


# ---- memory pressure ---------------------------------------------------------------------------

def test_every_tier_full_lru_spills_then_drops(q51_model, data_dir):
    d = Daemon(q51_model, data_dir, extra=SMALL_TIERS)
    try:
        s = d.stub()
        n_docs = scaled(32, 120)  # 32 x 19 blocks: past 64 + 64 + 367
        pinned = doc(999)
        reference, _ = greedy(s, pinned, no_cache=True)
        w = s.Warm(pb.WarmRequest(prompt=ids_prompt(pinned), cache=pb.CacheOptions(
            pin_ttl_seconds=600)))
        for i in range(n_docs):
            s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
            if i % 5 == 0:
                reads_work(s, doc(0))
        st = reads_work(s, doc(0))
        dev, host, disk = (tier(st, t) for t in (pb.TIER_DEVICE, pb.TIER_HOST, pb.TIER_DISK))
        c = st.storage
        # every tier is (nearly) full: the engine keeps a low watermark of free slots
        assert dev.blocks_used >= dev.blocks_capacity - 16, dev
        assert host.blocks_used >= host.blocks_capacity - 16, host
        assert c.disk_records >= disk.blocks_capacity * 3 // 4, (c.disk_records, disk)
        assert not disk.disabled, disk
        # the policy, in the counters: spills device -> host -> disk, then drops from the coldest
        assert c.spilled_to_host_blocks > 0
        assert c.spilled_to_disk_blocks + c.write_through_blocks > 0
        assert c.disk_writes > 0 and sum((c.dropped_blocks.device, c.dropped_blocks.host,
                                          c.dropped_blocks.disk)) > 0, c
        # LRU: the oldest documents are gone, the newest are in the device tier, and no document
        # is more cached than a newer one (all have the same size and were used once, in order)
        cached = []
        for i in range(n_docs):
            lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(i))))
            cached.append((lk.cached_tokens, lk.cached_tokens_by_tier))
        assert cached[0][0] == 0, cached[0]
        assert cached[-1][0] == 300 and cached[-1][1].device > 0, cached[-1]
        totals = [x[0] for x in cached]
        assert all(totals[i] <= totals[i + 1] + 16 for i in range(n_docs - 1)), totals
        assert any(x[1].host > 0 for x in cached) and any(x[1].disk > 0 for x in cached), cached
        # the pinned prefix was never spilled, and it still gives the same tokens
        lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(pinned)))
        assert lk.cached_tokens_by_tier.device >= 288, lk
        out, final = greedy(s, pinned)
        assert out == reference and final.usage.cached_tokens >= 288
        # a request that cannot fit in the device tier at all is refused, and nothing breaks
        code, msg = code_of(lambda: greedy(s, doc(5000), n=1000))  # 300 + 1000 tokens > 64 blocks
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
        code, msg = code_of(lambda: s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(5001, 1100)))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
        # a disk-tier document still restores to the right tokens
        # (one wholly on disk: a doc with only its tail there may have the tail recomputed, the
        # restore-or-recompute choice being the measured rates')
        on_disk = [i for i in range(n_docs) if cached[i][1].disk >= 288][-1]
        ref_disk, _ = greedy(s, doc(on_disk), no_cache=True)
        out, final = greedy(s, doc(on_disk))
        assert out == ref_disk and final.usage.cached_tokens_by_tier.disk > 0, final.usage
        st2 = reads_work(s, doc(0))
        report("pressure_full_tiers", docs=n_docs, blocks_per_doc=19,
               device=[dev.blocks_used, dev.blocks_capacity],
               host=[host.blocks_used, host.blocks_capacity],
               disk=[disk.blocks_used, disk.blocks_capacity], disk_records=c.disk_records,
               spilled_to_host=c.spilled_to_host_blocks, spilled_to_disk=c.spilled_to_disk_blocks,
               write_through=c.write_through_blocks, disk_writes=c.disk_writes,
               dropped=[c.dropped_blocks.device, c.dropped_blocks.host, c.dropped_blocks.disk],
               map_full_retries=c.map_full_retries,
               restored_from_disk=st2.storage.restored_from_disk_blocks,
               cached_tokens_oldest_to_newest=totals)
        s.Unpin(pb.UnpinRequest(prefix_id=w.prefix_id))
        s.Evict(pb.EvictRequest(all=True))
        st = s.Stats(pb.StatsRequest())
        assert [t.blocks_used for t in st.tiers] == [0, 0, 0] and st.storage.disk_records == 0
    finally:
        assert d.stop() == 0


def test_shared_prefix_under_pressure_waits_instead_of_failing(q51_model, data_dir):
    """Many concurrent requests that share a long cached prefix, on a device tier that cannot
    hold them all at once: the ones that do not fit wait in the queue, none fails in the middle
    of its prefill. The shared prefix (20 of the 64 blocks) is held by every running request and
    must count against admission beside their reservations; counted apart, the engine admitted
    up to 12 requests (60 blocks reserved + 20 held) and some died with RESOURCE_EXHAUSTED
    "the KV cache is full"."""
    d = Daemon(q51_model, data_dir, extra=["--kv-cache-mb", "1", "--host-cache-mb", "0",
                                           "--disk-cache-mb", "0"])
    try:
        s = d.stub()
        shared = doc(7, 320)  # 20 blocks
        s.Warm(pb.WarmRequest(prompt=ids_prompt(shared)))
        n_clients = scaled(24, 96)
        results = [None] * n_clients

        def one(i):
            ids = shared + [5 + (i * 7 + j) % 400 for j in range(32)]
            try:
                out, final = greedy(s, ids, n=32, timeout=300)
                results[i] = ("OK", final.usage.cached_tokens, len(out))
            except grpc.RpcError as e:
                results[i] = (e.code().name, e.details(), 0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results if r[0] != "OK"]
        report("pressure_shared_prefix", clients=n_clients, failed=len(failed),
               cached_tokens=sorted({r[1] for r in results if r[0] == "OK"}))
        assert not failed, failed
        assert all(r[1] >= 320 and r[2] == 32 for r in results), results
        st = s.Stats(pb.StatsRequest())
        assert tier(st, pb.TIER_DEVICE).blocks_used <= tier(st, pb.TIER_DEVICE).blocks_capacity
    finally:
        assert d.stop() == 0


# ---- clients leaving at every stage ---------------------------------------------------------

ADMIN = "admin-key-for-the-pressure-tests-0123"


def wait_until(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def tenant_blocks(stub):
    """The caller's blocks in every tier (Stats lists only the caller's tenant)."""
    t = stub.Stats(pb.StatsRequest()).tenants[0]
    return t.blocks.device + t.blocks.host + t.blocks.disk


def evict_mine_until_empty(stub, timeout=20.0):
    """Evict(all) as the victim tenant until it holds no block anywhere (the engine reaps a
    cancelled sequence at its next step). Returns what it still holds at the end."""
    end = time.monotonic() + timeout
    while True:
        stub.Evict(pb.EvictRequest(all=True))
        left = tenant_blocks(stub)
        if left == 0 or time.monotonic() > end:
            return left
        time.sleep(0.05)


class Bystander:
    """A well-behaved tenant generating greedily over and over on its own connection while the
    victim's clients leave; every answer must equal the reference."""

    def __init__(self, stub, ids):
        self.s = stub
        self.ids = ids
        self.reference, _ = greedy(self.s, ids, n=8, no_cache=True)
        self.runs, self.errors = 0, []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop)
        self.t.start()

    def loop(self):
        while not self.stop.is_set():
            try:
                out, _ = greedy(self.s, self.ids, n=8, timeout=120)
                if out != self.reference:
                    self.errors.append(("wrong tokens", out))
                self.runs += 1
            except grpc.RpcError as e:
                self.errors.append((e.code(), e.details()))

    def finish(self):
        self.stop.set()
        self.t.join(180)
        assert not self.errors, self.errors[:3]
        assert self.runs > 0
        return self.runs


def leave(d, key, how, req, after=None):
    """Starts a Generate as the tenant of `key` and leaves: 'cancel' (grpcio cancels: RST_STREAM)
    or 'disconnect' (the TCP connection closed under the stream). `after`: None = at once,
    'first' = after the first message, or a number of seconds."""
    if how == "cancel":
        it = d.stub(key).Generate(req, timeout=120)
        if after == "first":
            next(it)
        elif after:
            time.sleep(after)
        it.cancel()
        return
    w = Wire(d.port)
    w.preface()
    w.wait_for(lambda: w.settings_acked, 2.0)
    sid = w.request("/prefixd.v1.Prefixd/Generate", req.SerializeToString(),
                    extra=[("authorization", f"Bearer {key}")])
    if after == "first":
        assert w.wait_for(lambda: sid in w.data, 30.0), w.headers
    elif after:
        time.sleep(after)
    w.close()


def two_tenants(d):
    adm = d.admin(ADMIN)
    kv = adm.CreateTenant(pb.CreateTenantRequest(name="victim")).api_key
    kb = adm.CreateTenant(pb.CreateTenantRequest(name="bystander")).api_key
    return kv, kb


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_client_leaves_at_every_stage(tiny_long_model, q51_model, data_dir, how):
    """--max-running 1: a request waits in the queue behind another; a long prompt is prefilled
    in chunks of 16 tokens; a sequence decodes; a prefix comes back from disk. The victim's
    client leaves in each stage: the engine gives every block back (the victim's Evict(all)
    leaves it 0 blocks; at the end the tiers hold nothing), and a bystander tenant on another
    connection keeps getting the right tokens all along."""
    figures = {}
    forever = pb.SamplingParams(ignore_eos=True)
    # queued, prefilling, decoding: tiny.gguf's shape (with a long context, so that the blocker
    # below lasts seconds however fast the steps are), one sequence at a time, small prefill chunks
    os.makedirs(os.path.join(data_dir, "a"))
    d = Daemon(tiny_long_model, os.path.join(data_dir, "a"), admin_key=ADMIN, extra=[
        "--max-running", "1", "--max-batch-tokens", "16"])
    try:
        kv, kb = two_tenants(d)
        s = d.stub(kv)
        by = Bystander(d.stub(kb), doc(1, 40))
        # queued: the victim's blocker runs; its second request waits (one may run at a time).
        # 30,000 tokens: at tens of microseconds a step it outlasts the stage; it is cancelled
        blocker = d.stub(kv).Generate(pb.GenerateRequest(prompt=ids_prompt(doc(2, 64)),
                                                         sampling=forever, max_tokens=30000),
                                      timeout=120)
        next(blocker)
        depth = []
        victim = threading.Thread(target=leave, args=(d, kv, how, pb.GenerateRequest(
            prompt=ids_prompt(doc(3, 64)), sampling=forever, max_tokens=200), 0.3))
        victim.start()
        time.sleep(0.15)
        depth.append(s.Stats(pb.StatsRequest()).queue_depth)
        victim.join()
        assert blocker.is_active(), "the blocker ended early"
        blocker.cancel()
        figures["queue_depth_while_queued"] = depth[0]
        assert depth[0] >= 1, "the victim was never seen queued"
        assert evict_mine_until_empty(s) == 0, "queued: blocks left"
        # prefilling: 8,000 tokens in chunks of 16 (500 steps); leave after 30 ms
        leave(d, kv, how, pb.GenerateRequest(prompt=ids_prompt(doc(4, 8000)), sampling=forever,
                                             max_tokens=8), 0.03)
        assert evict_mine_until_empty(s) == 0, "prefilling: blocks left"
        # the same prompt to its end, for comparison: its prefill takes longer than 30 ms
        _, f = greedy(s, doc(4, 8000), n=1)
        figures["prefill_ms_of_the_whole_prompt"] = f.timings.prefill_ms
        assert f.timings.prefill_ms > 30, f.timings
        assert evict_mine_until_empty(s) == 0
        # decoding: leave after the first tokens
        leave(d, kv, how, pb.GenerateRequest(prompt=ids_prompt(doc(5, 64)), sampling=forever,
                                             max_tokens=1500), "first")
        assert evict_mine_until_empty(s) == 0, "decoding: blocks left"
        figures["bystander_runs_a"] = by.finish()
        d.stub(kb).Evict(pb.EvictRequest(all=True))
        st = d.stub(ADMIN).Stats(pb.StatsRequest())
        assert [t.blocks_used for t in st.tiers] == [0, 0, 0] and st.queue_depth == 0, st
    finally:
        assert d.stop() == 0
    # restoring: tiny-q5_1 with small tiers; the victim's prefix is moved to disk, then asked for
    os.makedirs(os.path.join(data_dir, "b"))
    d = Daemon(q51_model, os.path.join(data_dir, "b"), admin_key=ADMIN, extra=SMALL_TIERS + [
        "--disk-write", "always", "--max-running", "1"])
    try:
        kv, kb = two_tenants(d)
        s = d.stub(kv)
        by = Bystander(d.stub(kb), doc(6, 40))
        restores = 0
        for i in range(scaled(6, 30)):
            target = doc(100 + i, 160)
            s.Warm(pb.WarmRequest(prompt=ids_prompt(target)))
            s.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DEVICE))  # device -> host
            s.Evict(pb.EvictRequest(all=True, tier=pb.TIER_HOST))    # host -> disk
            lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(target)))
            assert lk.cached_tokens_by_tier.disk == lk.cached_tokens > 0, lk
            before = d.stub(ADMIN).Stats(pb.StatsRequest()).storage.restored_from_disk_blocks
            # the restore takes well under a millisecond: leave at once, or a little later
            leave(d, kv, how, pb.GenerateRequest(prompt=ids_prompt(target), max_tokens=64,
                                                 sampling=forever), [None, 0.001, 0.003][i % 3])
            assert evict_mine_until_empty(s) == 0, f"restoring ({i}): blocks left"
            after = d.stub(ADMIN).Stats(pb.StatsRequest()).storage.restored_from_disk_blocks
            restores += after > before
        figures["restores_started_before_leaving"] = restores
        figures["bystander_runs_b"] = by.finish()
        d.stub(kb).Evict(pb.EvictRequest(all=True))
        st = d.stub(ADMIN).Stats(pb.StatsRequest())
        assert st.storage.read_failures == 0 and st.storage.checksum_failures == 0
        assert [t.blocks_used for t in st.tiers] == [0, 0, 0] and st.queue_depth == 0, st
    finally:
        assert d.stop() == 0
    report(f"disconnect_{how}", **figures)


# ---- the disk fills up --------------------------------------------------------------------------

def test_disk_full_disables_the_disk_tier_and_serving_goes_on(q51_model, data_dir):
    """The disk tier's directory is a 2 MiB tmpfs under an 8 MiB budget: its writes fail
    (ENOSPC growing blocks.dat, or EIO for a short write) once it is full; the daemon must disable the disk tier,
    say why in Stats, and go on serving from RAM -- also after a restart on the full disk."""
    kv = os.path.join(data_dir, "kvfs")
    os.makedirs(kv)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", kv],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root and mount rights): "
                    f"{r.stderr.strip()}")
    try:
        args = SMALL_TIERS + ["--disk-dir", kv, "--disk-write", "always"]
        d = Daemon(q51_model, data_dir, extra=args)
        try:
            s = d.stub()
            refs = {i: greedy(s, doc(i), no_cache=True)[0] for i in (0, 13)}
            for i in range(14):  # 266 blocks, every one written through: 2 MiB hold ~120
                s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
                reads_work(s, doc(0))
            st = s.Stats(pb.StatsRequest())
            disk = tier(st, pb.TIER_DISK)
            assert disk.disabled and disk.disabled_reason, disk
            assert "disk tier disabled" in d.log_text()
            assert s.Health(pb.HealthRequest()).status == pb.HealthResponse.STATUS_SERVING
            # serving goes on: what is in RAM is still a hit, the rest is computed, all exact
            out, final = greedy(s, doc(13))
            assert out == refs[13] and final.usage.cached_tokens > 0
            out, final = greedy(s, doc(0))
            assert out == refs[0]
            for i in range(14, 20):  # and the RAM tiers keep spilling and dropping
                s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
            st2 = reads_work(s, doc(0))
            report("disk_full", reason=disk.disabled_reason, disk_writes=st.storage.disk_writes,
                   dropped=[st2.storage.dropped_blocks.device, st2.storage.dropped_blocks.host,
                            st2.storage.dropped_blocks.disk],
                   tmpfs_used=subprocess.run(["df", "--output=used,size", kv], text=True,
                                             capture_output=True).stdout.split()[-2:])
            assert st2.storage.dropped_blocks.host > 0
        finally:
            assert d.stop() == 0
        # a restart on the full disk: the daemon starts and serves
        d = Daemon(q51_model, data_dir, extra=args)
        try:
            s = d.stub()
            out, _ = greedy(s, doc(13))
            assert out == refs[13]
            assert s.Health(pb.HealthRequest()).status == pb.HealthResponse.STATUS_SERVING
        finally:
            assert d.stop() == 0
    finally:
        subprocess.run(["umount", kv], check=False)
