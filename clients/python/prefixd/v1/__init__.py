"""The generated gRPC stubs of ``prefixd.v1`` (``prefixd_pb2``, ``prefixd_pb2_grpc``).

protoc names the Python modules after the proto's package path, ``prefixd/v1/``, which is this
package. An installed ``prefixd`` carries the stubs here, generated at build time. In the source
tree they are absent: they are then generated into a cache folder (see ``prefixd._protoc``) and
that folder is added to this package's ``__path__``, so ``from prefixd.v1 import prefixd_pb2``
works either way.
"""
import os as _os

if not all(_os.path.isfile(_os.path.join(_os.path.dirname(__file__), _m))
           for _m in ("prefixd_pb2.py", "prefixd_pb2_grpc.py")):
    from prefixd._protoc import ensure_stubs as _ensure_stubs

    __path__.append(_ensure_stubs())  # type: ignore[name-defined]  # noqa: F821
