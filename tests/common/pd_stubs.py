"""What every Python suite that talks to a real prefixd shares (tests/daemon, and tests/stress's
pd_harness with the suites built on it): the gRPC stubs, generated from our .proto by grpcio-tools
at test time (never checked in), and Keyed, a stub whose every call sends an API key.

Environment: PREFIXD_PROTO, the proto root (default: the repository's proto/).
"""
import atexit
import importlib
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_stubs(proto="prefixd/v1/prefixd.proto"):
    """(module_pb2, module_pb2_grpc) of one .proto under the proto root (by default prefixd's own;
    "grpc/health/v1/health.proto" gives the health protocol's as top-level modules health_pb2 and
    health_pb2_grpc, since grpcio owns the Python package `grpc`), generated into a temporary
    folder removed at exit."""
    out = tempfile.mkdtemp(prefix="prefixd-test-stubs-")
    atexit.register(shutil.rmtree, out, True)
    root = os.environ.get("PREFIXD_PROTO", os.path.join(HERE, "../../proto"))
    if not proto.startswith("prefixd/"):
        root, proto = os.path.join(root, os.path.dirname(proto)), os.path.basename(proto)
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(root, proto)])
    assert rc == 0, "stub generation failed"
    sys.path.insert(0, out)
    module = proto[:-len(".proto")].replace("/", ".")
    return (importlib.import_module(module + "_pb2"),
            importlib.import_module(module + "_pb2_grpc"))


class Keyed:
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
