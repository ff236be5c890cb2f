"""What the stress and security suites share: stubs generated from our .proto at test time, a
real prefixd on loopback (a free port, its own data directory, no Unix socket, no metrics
listener), its resident memory from /proc, a few request helpers, the scale knob and the
latency probe. tests/security imports this file too (its conftest puts this folder on sys.path).

Environment (set by CTest): PREFIXD_BIN, PREFIXD_PROTO, PD_TINY_MODEL; PD_STRESS_SCALE = ci
(default: every loop sized for a run of about a minute) or full (minutes; label slow).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ABUSE = os.path.join(HERE, "abuse.py")


sys.path.insert(0, os.path.join(HERE, "..", "common"))
from pd_stubs import Keyed, generate_stubs  # noqa: E402,F401

pb, pb_grpc = generate_stubs()

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
SCALE = os.environ.get("PD_STRESS_SCALE", "ci")
FULL = SCALE == "full"


def scaled(ci, full):
    """A size for this run: `ci` by default, `full` under PD_STRESS_SCALE=full."""
    return full if FULL else ci


def tiny_model():
    return os.environ.get("PD_TINY_MODEL")


def q51_model():
    tiny = tiny_model()
    return tiny and os.path.join(os.path.dirname(tiny), "tiny-q5_1.gguf")


def tiny_long_model():
    """tiny.gguf's shape with a 32,768-token context: a request on it can be made to last (a long
    generation or prefill) however fast the machine's steps are."""
    tiny = tiny_model()
    return tiny and os.path.join(os.path.dirname(tiny), "tiny-long.gguf")


class Daemon:
    """One prefixd process. `stub(key)` gives a Prefixd stub sending that API key.

    One compute thread by default: these suites measure latency on small, often shared
    machines, where OpenMP workers spinning at a barrier while a core is taken by another
    process slow every forward pass down by orders of magnitude (see docs/reliability.md)."""

    def __init__(self, model, data_dir, extra=(), admin_key=None, env=None, preexec_fn=None,
                 threads=1):
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir, "prefixd.log")
        self.args = [os.environ["PREFIXD_BIN"], "--model", model, "--listen", "127.0.0.1:0",
                     "--unix", "none", "--data-dir", data_dir, "--threads", str(threads), *extra]
        e = dict(os.environ)
        e.pop("PREFIXD_ADMIN_KEY", None)
        e["PREFIXD_METRICS_LISTEN"] = "none"  # no fixed port shared between tests
        if admin_key:
            e["PREFIXD_ADMIN_KEY"] = admin_key
        e.update(env or {})
        self.env = e
        self.preexec_fn = preexec_fn
        self.channels = []
        self._start()

    def _start(self):
        self.log = open(self.log_path, "a")
        start_at = self.log.tell()
        self.proc = subprocess.Popen(self.args, stderr=self.log, env=self.env,
                                     preexec_fn=self.preexec_fn)
        deadline = time.time() + 120
        while True:
            with open(self.log_path) as f:
                f.seek(start_at)
                text = f.read()
            m = re.search(r'msg="prefixd ready".* port=(\d+)', text)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefixd exited {self.proc.returncode}: {text}")
            if time.time() > deadline:
                raise RuntimeError("prefixd did not start: " + text)
            time.sleep(0.05)
        self.target = f"127.0.0.1:{self.port}"
        self.pid = self.proc.pid

    def restart(self):
        assert self.stop() == 0
        self._start()

    def channel(self):
        """A channel with a connection of its own (grpcio otherwise shares one connection
        between the channels of a process that name the same target)."""
        ch = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.channels.append(ch)
        return ch

    def stub(self, key=None, channel=None):
        return Keyed(pb_grpc.PrefixdStub(channel or self.channel()), key)

    def admin(self, key):
        return Keyed(pb_grpc.AdminStub(self.channel()), key)

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self, field="VmRSS"):
        """Resident memory of the daemon from /proc/PID/status, in KiB: VmRSS (all of it), or
        RssAnon (the heap and stacks, without the mapped model and LMDB files)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field}")

    def sanitized(self):
        """True if the daemon runs under AddressSanitizer (make asan): freed memory then sits in
        ASan's quarantine (256 MiB by default), so resident memory grows with every allocation
        and says nothing about leaks -- ASan's own leak check at exit does (stop() returns
        non-zero on a leak)."""
        with open(f"/proc/{self.pid}/maps") as f:
            return "libasan" in f.read()

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout=60):
        for ch in self.channels:
            ch.close()
        self.channels = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()




def code_of(fn):
    """Runs fn, which must fail with a gRPC status; returns (code, details)."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("the call should have failed")


def ids_prompt(ids):
    return pb.Prompt(tokens=pb.TokenIds(ids=list(ids)))


def generate(stub, prompt, **kw):
    """Runs a Generate stream; returns (text, token ids, final message)."""
    text, ids, final = "", [], None
    timeout = kw.pop("timeout", 120)
    for m in stub.Generate(pb.GenerateRequest(prompt=prompt, **kw), timeout=timeout):
        text += m.text
        ids += list(m.token_ids)
        if m.finish_reason:
            final = m
    assert final is not None, "the stream ended without a final message"
    return text, ids, final


def tier(st, t):
    return [x for x in st.tiers if x.tier == t][0]


def device_used(stub):
    return tier(stub.Stats(pb.StatsRequest()), pb.TIER_DEVICE).blocks_used


def evict_all_until_empty(stub, timeout=20.0):
    """Evict(all) until the device tier holds no block (the engine reaps a cancelled sequence
    at its next step, so the first Evict may run before it gave its blocks back). Returns the
    device tier's blocks_used at the end (0 unless something leaked)."""
    end = time.monotonic() + timeout
    while True:
        stub.Evict(pb.EvictRequest(all=True))
        st = stub.Stats(pb.StatsRequest())
        used = tier(st, pb.TIER_DEVICE).blocks_used
        if used == 0 and st.queue_depth == 0 or time.monotonic() > end:
            return used
        time.sleep(0.05)


# ---- latency ----------------------------------------------------------------------------------

def probe_latencies(stub, kind, n=None, seconds=None, stop=None):
    """Sequential Health or Tokenize calls from a well-behaved client; returns each call's
    latency in ms. Runs n calls, or until `seconds` pass or stop() is true."""
    req = (pb.HealthRequest() if kind == "health" else
           pb.TokenizeRequest(prompt=pb.Prompt(text="the well-behaved client's question")))
    fn = stub.Health if kind == "health" else stub.Tokenize
    out = []
    end = time.monotonic() + (seconds if seconds is not None else 1e9)
    while (n is None or len(out) < n) and time.monotonic() < end and not (stop and stop()):
        t0 = time.perf_counter()
        fn(req, timeout=30)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def p50(xs):
    return statistics.median(xs) if xs else float("nan")


ATTACKER_NICE = 5


def attacker_setup():
    """Runs in an attacker's child process (abuse.py, or the spinning stand-in for its load)
    before it starts: niced, so that on a small machine it does not simply take the CPU from the
    daemon and the measured client, and held to the last allowed CPU when there are two or more,
    so that a baseline and the attack it is compared with load the same core (left free, the
    scheduler placed the measured client beside the daemon in some rounds and across from it in
    others: 0.05 ms against 0.09 ms for the same calls)."""
    os.nice(ATTACKER_NICE)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[-1]})


def start_abuse(mode, port, seconds, **args):
    """Starts abuse.py MODE in a child process set up by attacker_setup()."""
    return subprocess.Popen([sys.executable, ABUSE, mode, str(port), str(seconds),
                             json.dumps(args)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=attacker_setup)


def start_attacker_load():
    """A child spinning on the attacker's core at its niceness: the attacker's load without its
    attack, for baselines. The caller kills and waits for it."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=attacker_setup)


def wait_started(proc, timeout=30.0):
    """For modes that print {"started": true} once their connections are set up."""
    line = proc.stdout.readline()
    assert line, "the abuse child ended before starting"
    assert json.loads(line).get("started"), line


def abuse_result(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"abuse child failed ({proc.returncode}): {out}"
    return json.loads(out.strip().splitlines()[-1])


# ---- figures ----------------------------------------------------------------------------------

def report(test, **figures):
    """Records a test's measured figures: one JSON line appended to $PD_STRESS_REPORT when set
    (docs/reliability.md was written from such a file), and printed (pytest -s shows it)."""
    line = json.dumps({"test": test, "scale": SCALE, **figures}, sort_keys=True)
    print(line)
    path = os.environ.get("PD_STRESS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
