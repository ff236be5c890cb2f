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


def generate_stubs():
    """(prefixd_pb2, prefixd_pb2_grpc), generated into a temporary folder removed at exit."""
    out = tempfile.mkdtemp(prefix="prefixd-test-stubs-")
    atexit.register(shutil.rmtree, out, True)
    root = os.environ.get("PREFIXD_PROTO", os.path.join(HERE, "../../proto"))
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(root, "prefixd/v1/prefixd.proto")])
    assert rc == 0, "stub generation failed"
    sys.path.insert(0, out)
    return (importlib.import_module("prefixd.v1.prefixd_pb2"),
            importlib.import_module("prefixd.v1.prefixd_pb2_grpc"))


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
