"""Shared fixtures of the daemon's integration tests: stubs generated from our .proto by
grpcio-tools at test time, and a real prefixd process on loopback (a free port, a temporary
data directory), stopped with SIGTERM and required to exit 0.

Environment (set by CTest): PREFIXD_BIN (the daemon), PREFIXD_PROTO (the proto root),
PD_TINY_MODEL (a synthetic GGUF), PREFIXD_MODEL (the default model, for the model-labelled tests).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from pd_stubs import Keyed, generate_stubs  # noqa: E402

pb, pb_grpc = generate_stubs()


class Daemon:
    """One prefixd process. `stub(key)` gives a Prefixd stub sending that API key. env: variables
    set for it on top of this process's environment."""

    def __init__(self, model, data_dir, extra=(), admin_key=None, unix=None, env=None):
        self.log_path = os.path.join(data_dir, "prefixd.log")
        args = [os.environ["PREFIXD_BIN"], "--model", model, "--listen", "127.0.0.1:0",
                "--data-dir", data_dir, "--threads", "2", *extra]
        if unix:
            args += ["--unix", unix]
        child_env = dict(os.environ)
        child_env.pop("PREFIXD_ADMIN_KEY", None)
        if admin_key:
            child_env["PREFIXD_ADMIN_KEY"] = admin_key
        child_env.update(env or {})
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stderr=self.log, env=child_env)
        deadline = time.time() + 60
        while True:
            text = open(self.log_path).read()
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
        self.channels = []

    def channel(self):
        ch = grpc.insecure_channel(self.target)
        self.channels.append(ch)
        return ch

    def stub(self, key=None):
        return Keyed(pb_grpc.PrefixdStub(self.channel()), key)

    def admin(self, key):
        return Keyed(pb_grpc.AdminStub(self.channel()), key)

    def stop(self, timeout=60):
        for ch in self.channels:
            ch.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        return rc

    def log_text(self):
        return open(self.log_path).read()




def chat(*pairs, **kw):
    msgs = [pb.ChatMessage(role=r, content=c) for r, c in pairs]
    return pb.Prompt(chat=pb.ChatMessages(messages=msgs, **kw))


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


@pytest.fixture
def tiny_model():
    path = os.environ.get("PD_TINY_MODEL")
    if not path or not os.path.exists(path):
        pytest.skip("PD_TINY_MODEL not built")
    return path


@pytest.fixture
def tiny_long_model(tiny_model):
    """tiny.gguf's shape with a 32,768-token context (tests/runtime): a generation on it lasts
    long enough, on any machine, for a deadline or a cancel to land in its middle."""
    path = os.path.join(os.path.dirname(tiny_model), "tiny-long.gguf")
    if not os.path.exists(path):
        pytest.skip("tiny-long.gguf not built")
    return path


@pytest.fixture
def default_model():
    path = os.environ.get("PREFIXD_MODEL")
    if not path or not os.path.exists(path):
        pytest.skip("the default model is not fetched (scripts/setup)")
    return path


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="prefixd-data-") as d:
        yield d


def raw(port, data, read_timeout=15):
    """Sends bytes on a fresh connection; returns everything the server sent until it closed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_of(response):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert m, response[:200]
    return int(m.group(1))
