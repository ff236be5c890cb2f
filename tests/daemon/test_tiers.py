"""The storage tiers end to end: a real prefixd with a device tier of 64 blocks spills to host
RAM and to LMDB on disk, restores on a hit, and keeps its disk tier across restarts and kill -9.

Every restored prefix is checked by what a user sees: greedy tokens generated over the restored
KV are the same as over KV computed from scratch (no_cache). The CPU kernels are bit-exact
whether a block was computed in this request or came from a cache, so any wrong byte in a
restored block changes the logits and, within 16 tokens, the tokens.

The model is the synthetic tiny-q5_1 (1 KiB of KV per token, 16 KiB per block), so
--kv-cache-mb 1 is a device tier of 64 blocks and a 300-token prompt takes 19 of them.
"""
import os
import random
import signal
import threading
import time

import pytest

from conftest import Daemon, generate, pb

ADMIN = "admin-key-for-tier-tests-0123456789"


@pytest.fixture
def q51_model():
    tiny = os.environ.get("PD_TINY_MODEL")
    path = tiny and os.path.join(os.path.dirname(tiny), "tiny-q5_1.gguf")
    if not path or not os.path.exists(path):
        pytest.skip("tiny-q5_1.gguf not built")
    return path


def doc(i, n_tokens=300):
    """Token ids of a distinct 'document' (its first token names it)."""
    rng = random.Random(i)
    return [10 + i % 400] + [rng.randrange(5, 500) for _ in range(n_tokens - 1)]


def ids_prompt(ids):
    return pb.Prompt(tokens=pb.TokenIds(ids=ids))


def greedy(stub, ids, no_cache=False, n=16):
    _, out, final = generate(stub, ids_prompt(ids), max_tokens=n,
                             sampling=pb.SamplingParams(ignore_eos=True),
                             cache=pb.CacheOptions(no_cache=no_cache))
    return out, final


def tiers(extra=()):
    return ("--kv-cache-mb", "1", *extra)


def stats(stub):
    return stub.Stats(pb.StatsRequest())


def test_spill_to_host_then_restore_gives_the_same_tokens(q51_model, data_dir):
    d = Daemon(q51_model, data_dir, extra=tiers(("--host-cache-mb", "4", "--disk-cache-mb", "0")))
    try:
        s = d.stub()
        target = doc(0)
        reference, _ = greedy(s, target, no_cache=True)
        s.Warm(pb.WarmRequest(prompt=ids_prompt(target)))
        for i in range(1, 6):  # 5 x 19 blocks: more than the device tier's 64
            s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
        st = stats(s)
        assert st.storage.spilled_to_host_blocks > 0
        assert [t.tier for t in st.tiers if t.disabled] == [pb.TIER_DISK]
        lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(target)))
        assert lk.cached_tokens_by_tier.host > 0, lk
        out, final = greedy(s, target)
        assert final.usage.cached_tokens_by_tier.host > 0, final.usage
        assert out == reference
        st = stats(s)
        assert st.storage.restored_from_host_blocks > 0
        assert st.storage.restores_chosen > 0
        # now hot again
        assert s.Lookup(pb.LookupRequest(prompt=ids_prompt(target))).cached_tokens_by_tier.device > 0
    finally:
        assert d.stop() == 0


def test_spill_to_disk_then_restore_gives_the_same_tokens(q51_model, data_dir):
    d = Daemon(q51_model, data_dir,
               extra=tiers(("--host-cache-mb", "1", "--disk-cache-mb", "64", "--disk-write",
                            "always")))
    try:
        s = d.stub()
        target = doc(0)
        reference, _ = greedy(s, target, no_cache=True)
        s.Warm(pb.WarmRequest(prompt=ids_prompt(target)))
        for i in range(1, 10):  # 9 x 19 blocks: past device (64) and host (64)
            s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
        st = stats(s)
        assert st.storage.spilled_to_disk_blocks > 0 and st.storage.disk_writes > 0
        disk = [t for t in st.tiers if t.tier == pb.TIER_DISK][0]
        assert disk.blocks_used > 0 and not disk.disabled and disk.bytes_used > 0
        lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(target)))
        assert lk.cached_tokens_by_tier.disk > 0, lk
        out, final = greedy(s, target)
        assert final.usage.cached_tokens_by_tier.disk > 0, final.usage
        assert final.usage.cached_tokens == sum((final.usage.cached_tokens_by_tier.device,
                                                 final.usage.cached_tokens_by_tier.host,
                                                 final.usage.cached_tokens_by_tier.disk))
        assert out == reference
        assert stats(s).storage.restored_from_disk_blocks > 0
        # evicting the disk tier really deletes the records (the host tier, nearly full, may
        # spill a few blocks right after: at most its low watermark, 64 / 16 + 1)
        before = stats(s).storage.disk_records
        ev = s.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DISK))
        assert ev.blocks_evicted.disk > 0 and before > 5
        assert stats(s).storage.disk_records <= 5
        # and evicting every tier leaves nothing anywhere
        s.Evict(pb.EvictRequest(all=True))
        st = stats(s)
        assert st.storage.disk_records == 0 and all(t.blocks_used == 0 for t in st.tiers), st
    finally:
        assert d.stop() == 0


def test_second_use_filter_writes_only_reused_blocks(q51_model, data_dir):
    d = Daemon(q51_model, data_dir, extra=tiers(("--host-cache-mb", "0", "--disk-cache-mb", "64")))
    try:
        s = d.stub()
        greedy(s, doc(0), n=1)
        assert stats(s).storage.disk_writes == 0  # used once: not worth a disk write
        greedy(s, doc(0), n=1)  # second use: written through
        deadline = time.time() + 10
        while stats(s).storage.disk_writes == 0 and time.time() < deadline:
            time.sleep(0.05)
        st = stats(s)
        assert st.storage.write_through_blocks > 0 and st.storage.write_filter == "second-use"
        for i in range(1, 6):  # used once each, pushed out of the device tier: dropped
            greedy(s, doc(i), n=1)
        st = stats(s)
        assert st.storage.write_filtered_blocks > 0
        assert st.storage.dropped_blocks.device > 0
    finally:
        assert d.stop() == 0


def test_warmed_prefix_survives_restart_as_a_disk_hit_and_stays_isolated(q51_model, data_dir):
    args = tiers(("--host-cache-mb", "1", "--disk-cache-mb", "64"))
    d = Daemon(q51_model, data_dir, extra=args, admin_key=ADMIN)
    try:
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        kb = adm.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
        a = d.stub(ka)
        target = doc(7)
        reference, _ = greedy(a, target, no_cache=True)
        w = a.Warm(pb.WarmRequest(prompt=ids_prompt(target)))
        assert w.computed_tokens == len(target)
    finally:
        assert d.stop() == 0
    d = Daemon(q51_model, data_dir, extra=args, admin_key=ADMIN)
    try:
        assert "disk_blocks_indexed=19" in d.log_text(), d.log_text()
        # the data directory is on a file system that takes O_DIRECT (ext4/xfs/tmpfs here)
        assert "disk_io=direct " in d.log_text(), d.log_text()
        a, b = d.stub(ka), d.stub(kb)
        # beta sends the same prompt: nothing of alpha's is a hit, and nothing is restored
        assert b.Lookup(pb.LookupRequest(prompt=ids_prompt(target))).cached_tokens == 0
        _, fb = greedy(b, target, n=2)
        assert fb.usage.cached_tokens == 0
        assert stats(d.stub(ADMIN)).storage.restored_from_disk_blocks == 0
        lk = a.Lookup(pb.LookupRequest(prompt=ids_prompt(target)))
        assert lk.cached_tokens == len(target) == lk.cached_tokens_by_tier.disk, lk
        out, fa = greedy(a, target)
        assert fa.usage.cached_tokens_by_tier.disk > 0 and fa.timings.restore_ms >= 0
        assert out == reference
    finally:
        assert d.stop() == 0


def test_fp8_cache_spills_restores_and_survives_a_restart(q51_model, data_dir):
    """An fp8-e4m3 cache (a scale per row): a block is 2 * layers * kv_heads * B * (head_dim + 4)
    bytes, Stats reports it, and blocks that went to host and disk and came back, or came back
    from disk after a restart, give the tokens computed from scratch."""
    args = tiers(("--cache-dtype", "fp8", "--host-cache-mb", "1", "--disk-cache-mb", "64",
                  "--disk-write", "always"))
    d = Daemon(q51_model, data_dir, extra=args)
    try:
        s = d.stub()
        st = stats(s)
        assert "cache_dtype=fp8-e4m3 " in d.log_text()
        # tiny-q5_1: 2 layers, 8 kv heads, head_dim 16 (1 KiB per token in f16)
        assert st.kv_bytes_per_token == 2 * 2 * 8 * (16 + 4), st.kv_bytes_per_token
        target = doc(0)
        reference, _ = greedy(s, target, no_cache=True)
        s.Warm(pb.WarmRequest(prompt=ids_prompt(target)))
        for i in range(1, 16):  # 15 x 19 blocks: past device (102) and host (102)
            s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i))))
        st = stats(s)
        assert st.storage.spilled_to_host_blocks > 0 and st.storage.spilled_to_disk_blocks > 0
        lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(target)))
        assert lk.cached_tokens_by_tier.disk > 0, lk
        out, final = greedy(s, target)
        assert final.usage.cached_tokens_by_tier.disk > 0, final.usage
        assert out == reference
    finally:
        assert d.stop() == 0
    d = Daemon(q51_model, data_dir, extra=args)
    try:
        s = d.stub()
        lk = s.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(1))))
        assert lk.cached_tokens_by_tier.disk > 0, lk
        out, final = greedy(s, doc(1))
        assert final.usage.cached_tokens_by_tier.disk > 0, final.usage
        assert out == greedy(s, doc(1), no_cache=True)[0]
    finally:
        assert d.stop() == 0


def pins_by_id(stub):
    r = stub.ListPrefixes(pb.ListPrefixesRequest(page_size=1000))
    return {p.id: p for p in r.prefixes}


def wait_pins_saved(stub, before, timeout=30.0):
    """Waits until the pins have been stored after `before` (Stats.storage.pin_saves)."""
    end = time.monotonic() + timeout
    while stats(stub).storage.pin_saves <= before:
        assert time.monotonic() < end, "the pins were never stored"
        time.sleep(0.05)


def test_pins_survive_restart_and_kill_9(q51_model, data_dir):
    """Pins are stored beside the blocks: after a restart (and after kill -9 once stored) a
    prefix pinned for ever is pinned for ever, one pinned for an hour has the rest of its hour,
    an unpinned or never-pinned one is not pinned, and Evict of the disk tier leaves the pinned
    ones in place."""
    args = tiers(("--host-cache-mb", "1", "--disk-cache-mb", "64"))
    d = Daemon(q51_model, data_dir, extra=args, admin_key=ADMIN)
    try:
        adm = d.admin(ADMIN)
        ka = adm.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
        a = d.stub(ka)
        ids = {}
        for name, i in (("forever", 21), ("hour", 22), ("plain", 23), ("unpinned", 24)):
            ttl = 3600 if name == "hour" else 0
            w = a.Warm(pb.WarmRequest(prompt=ids_prompt(doc(i)),
                                      cache=pb.CacheOptions(pin_ttl_seconds=ttl)))
            ids[name] = w.prefix_id
        a.Pin(pb.PinRequest(prefix_id=ids["forever"]))
        a.Pin(pb.PinRequest(prefix_id=ids["unpinned"]))
        a.Unpin(pb.UnpinRequest(prefix_id=ids["unpinned"]))
        hour_end = time.time() * 1000 + 3600 * 1000
    finally:
        assert d.stop() == 0

    def check(d, forever_pinned):
        st = stats(d.stub(ADMIN)).storage
        got = pins_by_id(d.stub(ka))
        assert got[ids["forever"]].pinned == forever_pinned, got[ids["forever"]]
        if forever_pinned:
            assert got[ids["forever"]].pin_expires_unix_ms == 0
        h = got[ids["hour"]]
        assert h.pinned and abs(h.pin_expires_unix_ms - hour_end) < 120_000, (h, hour_end)
        for name in ("plain", "unpinned"):  # not pinned (or gone: evicted before a restart)
            assert ids[name] not in got or not got[ids[name]].pinned
        return st

    d = Daemon(q51_model, data_dir, extra=args, admin_key=ADMIN)
    try:
        st = check(d, True)
        assert st.pins_restored == 2, st
        a = d.stub(ka)
        # the disk tier emptied: the pinned prefixes stay, the plain one goes
        d.stub(ADMIN).Evict(pb.EvictRequest(all=True, tier=pb.TIER_DISK))
        for name, i in (("forever", 21), ("hour", 22), ("plain", 23)):
            lk = a.Lookup(pb.LookupRequest(prompt=ids_prompt(doc(i))))
            assert lk.cached_tokens == (0 if name == "plain" else 300), (name, lk)
        # unpin one, wait until the pins are stored, then kill -9
        before = stats(d.stub(ADMIN)).storage.pin_saves
        a.Unpin(pb.UnpinRequest(prefix_id=ids["forever"]))
        wait_pins_saved(d.stub(ADMIN), before)
        d.proc.kill()
        d.proc.wait()
    finally:
        if d.proc.poll() is None:
            d.stop()
    d = Daemon(q51_model, data_dir, extra=args, admin_key=ADMIN)
    try:
        st = check(d, False)
        assert st.pins_restored == 1, st
        out, final = greedy(d.stub(ka), doc(22))
        assert final.usage.cached_tokens_by_tier.disk > 0
        ref, _ = greedy(d.stub(ka), doc(22), no_cache=True)
        assert out == ref
    finally:
        assert d.stop() == 0


def test_kill_9_during_spills_loses_nothing_committed(q51_model, data_dir):
    """Warms in a loop with every block written to disk while the device and host tiers spill;
    kill -9 at a random moment; restart: every indexed prefix restores to the right tokens. Each
    round warms 6 documents the disk has not seen (a block already on disk is not written
    again, and the kill must come while writes are under way) beside 6 it has."""
    args = tiers(("--host-cache-mb", "1", "--disk-cache-mb", "64", "--disk-write", "always"))
    rng = random.Random(42)
    n_docs, rounds, fresh = 12, 3, 6
    references = {}
    for round_ in range(rounds):
        d = Daemon(q51_model, data_dir, extra=args)
        s = d.stub()
        if not references:
            references = {i: greedy(s, doc(i), no_cache=True)[0]
                          for i in range(n_docs + fresh * (rounds - 1))}
        first = round_ * fresh  # documents first .. first + n_docs - 1
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                try:
                    s.Warm(pb.WarmRequest(prompt=ids_prompt(doc(first + i % n_docs))),
                           timeout=10)
                except Exception:
                    return
                i += 1

        th = threading.Thread(target=load)
        th.start()
        # some writes have committed (however slow the machine), then a random moment
        end = time.monotonic() + 120
        while stats(s).storage.disk_writes == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert stats(s).storage.disk_writes > 0, f"round {round_}: nothing written in 120 s"
        time.sleep(0.3 + rng.random())
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        stop.set()
        th.join()
        d.log.close()
        d = Daemon(q51_model, data_dir, extra=args)
        try:
            s = d.stub()
            restored = 0
            for i in range(first + n_docs):  # every document warmed so far
                out, final = greedy(s, doc(i))
                assert out == references[i], f"round {round_}, doc {i}"
                restored += final.usage.cached_tokens_by_tier.disk
            assert stats(s).storage.checksum_failures == 0
            assert restored > 0, f"round {round_}: nothing came back from disk"
        finally:
            assert d.stop() == 0
