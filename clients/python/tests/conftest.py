"""Fixtures of the Python client's tests: a real prefixd process on loopback (a free port, a
temporary data directory, a synthetic model), stopped with SIGTERM and required to exit 0.

Environment (set by CTest, see tests/python_client/CMakeLists.txt): PREFIXD_BIN (the daemon),
PD_TINY_MODEL (a synthetic GGUF written by prefixd-mkgguf), PREFIXD_PROTO (the proto root, used
when the stubs are generated from the source tree), PYTHONPATH (clients/python).

By hand, from the repository root, after building into build-pyclient/:

    PREFIXD_BIN=build-pyclient/bin/prefixd \\
    PD_TINY_MODEL=build-pyclient/tests/runtime/tiny.gguf \\
    PYTHONPATH=clients/python .venv/bin/python -m pytest -q clients/python/tests
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional, Sequence

import pytest

import prefixd

ADMIN_KEY = "admin-key-for-python-client-tests-0123456789"

# The client reads these when no target or key is given; the tests always pass their own.
os.environ.pop("PREFIXD_API_KEY", None)
os.environ.pop("PREFIXD_ADDR", None)


class Daemon:
    """One prefixd process; ``target`` is its TCP address, ``unix`` its socket path if any."""

    def __init__(self, model: str, data_dir: str, extra: Sequence[str] = (),
                 admin_key: Optional[str] = None, unix: Optional[str] = None) -> None:
        binary = os.environ.get("PREFIXD_BIN")
        if not binary or not os.path.exists(binary):
            pytest.skip("PREFIXD_BIN is not set to a built prefixd")
        self.log_path = os.path.join(data_dir, "prefixd.log")
        args = [binary, "--model", model, "--listen", "127.0.0.1:0", "--data-dir", data_dir,
                "--threads", "2", *extra]
        self.unix = unix
        if unix:
            args += ["--unix", unix]
        env = dict(os.environ)
        env.pop("PREFIXD_ADMIN_KEY", None)
        env.pop("PREFIXD_ADMIN_KEY_FILE", None)
        if admin_key:
            env["PREFIXD_ADMIN_KEY"] = admin_key
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stderr=self.log, env=env)
        deadline = time.time() + 60
        while True:
            text = self.log_text()
            m = re.search(r'msg="prefixd ready".* port=(\d+)', text)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefixd exited {self.proc.returncode}: {text}")
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("prefixd did not start: " + text)
            time.sleep(0.05)
        self.target = f"127.0.0.1:{self.port}"
        self.clients: List[prefixd.Client] = []

    def client(self, key: Optional[str] = "", **kw) -> prefixd.Client:
        """A sync client of this daemon (closed at stop). ``key=""``: no key."""
        c = prefixd.Client(kw.pop("target", self.target), key=key, timeout=kw.pop("timeout", 120),
                           **kw)
        self.clients.append(c)
        return c

    def admin(self, key: str = ADMIN_KEY) -> prefixd.Admin:
        a = prefixd.Admin(self.target, key=key, timeout=60)
        self.clients.append(a)  # type: ignore[arg-type]
        return a

    def stop(self, timeout: float = 60) -> int:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
        return rc

    def log_text(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def pytest_report_header(config) -> str:
    import prefixd.v1
    return (f"prefixd client: {os.path.dirname(prefixd.__file__)}; "
            f"stubs: {prefixd.v1.__path__[-1]}")


@pytest.fixture
def tiny_model() -> str:
    path = os.environ.get("PD_TINY_MODEL")
    if not path or not os.path.exists(path):
        pytest.skip("PD_TINY_MODEL is not set to a built synthetic model")
    return path


@pytest.fixture
def data_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="prefixd-pyclient-") as d:
        yield d


@pytest.fixture
def daemon(tiny_model: str, data_dir: str) -> Iterator[Daemon]:
    """A single-tenant daemon (no keys), also listening on a Unix socket."""
    d = Daemon(tiny_model, data_dir, unix=os.path.join(data_dir, "prefixd.sock"))
    yield d
    assert d.stop() == 0, d.log_text()[-2000:]


@pytest.fixture
def multi(tiny_model: str, data_dir: str) -> Iterator[Daemon]:
    """A multi-tenant daemon with the admin key ADMIN_KEY."""
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN_KEY)
    yield d
    assert d.stop() == 0, d.log_text()[-2000:]


@pytest.fixture
def client(daemon: Daemon) -> prefixd.Client:
    return daemon.client()
