"""Shared fixtures of the daemon's integration tests: stubs generated from our .proto by
grpcio-tools at test time, and a real prefixd process on loopback (a free port, a temporary
data directory), stopped with SIGTERM and required to exit 0.

Environment (set by CTest): PREFIXD_BIN (the daemon), PREFIXD_PROTO (the proto root),
PD_TINY_MODEL (a synthetic GGUF), PREFIXD_MODEL (the default model, for the model-labelled tests).
"""
import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from grpc_tools import protoc


def _stubs():
    out = tempfile.mkdtemp(prefix="prefixd-stubs-")
    root = os.environ.get("PREFIXD_PROTO", os.path.join(os.path.dirname(__file__), "../../proto"))
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(root, "prefixd/v1/prefixd.proto")])
    assert rc == 0, "stub generation failed"
    sys.path.insert(0, out)
    return (importlib.import_module("prefixd.v1.prefixd_pb2"),
            importlib.import_module("prefixd.v1.prefixd_pb2_grpc"))


pb, pb_grpc = _stubs()


class Daemon:
    """One prefixd process. `stub(key)` gives a Prefixd stub sending that API key."""

    def __init__(self, model, data_dir, extra=(), admin_key=None, unix=None):
        self.log_path = os.path.join(data_dir, "prefixd.log")
        args = [os.environ["PREFIXD_BIN"], "--model", model, "--listen", "127.0.0.1:0",
                "--data-dir", data_dir, "--threads", "2", *extra]
        if unix:
            args += ["--unix", unix]
        env = dict(os.environ)
        env.pop("PREFIXD_ADMIN_KEY", None)
        if admin_key:
            env["PREFIXD_ADMIN_KEY"] = admin_key
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stderr=self.log, env=env)
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
        return _Keyed(pb_grpc.PrefixdStub(self.channel()), key)

    def admin(self, key):
        return _Keyed(pb_grpc.AdminStub(self.channel()), key)

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


class _Keyed:
    """Wraps a stub so every call carries `authorization: Bearer <key>` and a timeout."""

    def __init__(self, stub, key):
        self._stub, self._key = stub, key

    def __getattr__(self, name):
        fn = getattr(self._stub, name)

        def call(req, timeout=120, metadata=(), **kw):
            md = list(metadata)
            if self._key:
                md.append(("authorization", f"Bearer {self._key}"))
            return fn(req, timeout=timeout, metadata=md, **kw)
        return call


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
def default_model():
    path = os.environ.get("PREFIXD_MODEL")
    if not path or not os.path.exists(path):
        pytest.skip("the default model is not fetched (scripts/setup)")
    return path


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="prefixd-data-") as d:
        yield d
