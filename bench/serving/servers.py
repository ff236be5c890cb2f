"""Starting and stopping the servers, and watching them through /proc.

Each measured run gets a fresh server process (a cold cache, its own peak RSS). ProcWatch reads
/proc/PID/stat (utime + stime of all threads) before and after a run and samples VmRSS from
/proc/PID/status every 50 ms; VmHWM (the kernel's own peak RSS) is read at the end too.
"""
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class ProcWatch:
    def __init__(self, pid, period=0.05):
        self.pid, self.period = pid, period
        self.cpu0 = cpu_seconds(pid)
        self.rss_max_kb = 0
        self.task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self):
        while True:
            try:
                self.rss_max_kb = max(self.rss_max_kb, status_kb(self.pid, "VmRSS"))
            except OSError:
                return
            await asyncio.sleep(self.period)

    def finish(self):
        self.task.cancel()
        return dict(server_cpu_s=round(cpu_seconds(self.pid) - self.cpu0, 3),
                    peak_rss_mb=round(max(self.rss_max_kb, 0) / 1024, 1),
                    vm_hwm_mb=round(status_kb(self.pid, "VmHWM") / 1024, 1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prefixd:
    """prefixd with an admin key (multi-tenant mode), on a free loopback port."""

    def __init__(self, binary, model, threads, extra=(), admin_key=None):
        self.dir = tempfile.TemporaryDirectory(prefix="prefixd-bench-")
        self.admin_key = admin_key
        self.log_path = os.path.join(self.dir.name, "prefixd.log")
        args = [binary, "--model", model, "--listen", "127.0.0.1:0", "--data-dir",
                self.dir.name, "--threads", str(threads), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXD_")}
        if admin_key:
            path = os.path.join(self.dir.name, "admin.key")
            with open(path, "w") as f:
                f.write(admin_key + "\n")
            args += ["--admin-key-file", path]
        self.args = args
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        self.pid = self.proc.pid

    async def ready(self, timeout=120):
        deadline = time.time() + timeout
        while True:
            with open(self.log_path) as f:
                text = f.read()
            m = re.search(r'msg="prefixd ready".* port=(\d+)', text)
            if m:
                self.port = int(m.group(1))
                self.target = f"127.0.0.1:{self.port}"
                return
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"prefixd did not start: {text[-2000:]}")
            await asyncio.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        keep_log(self.log_path, "prefixd")
        self.dir.cleanup()
        return rc


def keep_log(path, name):
    """Copies a server's log to $SERVING_BENCH_LOGS (if set) before its folder goes."""
    where = os.environ.get("SERVING_BENCH_LOGS")
    if where:
        os.makedirs(where, exist_ok=True)
        shutil.copy(path, os.path.join(where, f"{name}-{time.strftime('%H%M%S')}.log"))


class LlamaServer:
    """llama-server on a free loopback port; ready when GET /health answers 200."""

    def __init__(self, binary, model, threads, ctx, slots, cache_reuse=0, extra=()):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="llama-bench-")
        self.log_path = os.path.join(self.dir.name, "llama-server.log")
        self.args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                     "-t", str(threads), "-tb", str(threads), "-c", str(ctx), "-np", str(slots),
                     *(["--cache-reuse", str(cache_reuse)] if cache_reuse else []), *extra]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    async def ready(self, timeout=120):
        deadline = time.time() + timeout
        while True:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await w.drain()
                line = await r.readline()
                w.close()
                if b" 200 " in line:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                with open(self.log_path) as f:
                    raise RuntimeError(f"llama-server did not start: {f.read()[-2000:]}")
            await asyncio.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        keep_log(self.log_path, "llama-server")
        self.dir.cleanup()
        return rc
