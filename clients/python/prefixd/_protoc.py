"""Generation of the gRPC stubs from ``proto/prefixd/v1/prefixd.proto``.

The stubs (``prefixd/v1/prefixd_pb2.py`` and ``prefixd/v1/prefixd_pb2_grpc.py``) are never
checked in. Two paths produce them, through the same :func:`run_protoc` call:

* building the package (``pip install clients/python``): ``setup.py`` loads this file and
  writes the stubs into the build tree, so the wheel carries them;
* using the package from the source tree (``PYTHONPATH=clients/python``): ``prefixd.v1`` finds
  no stubs next to itself and calls :func:`ensure_stubs`, which generates them once into a cache
  folder keyed by the proto's content and the tool versions, and reuses them afterwards.

This module imports only the standard library at import time (``grpc_tools`` is imported when
stubs are generated), so ``setup.py`` can load it before anything else is installed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from typing import Iterable, Optional

PROTO_FILE = os.path.join("prefixd", "v1", "prefixd.proto")
"""The proto file, relative to a proto root (an ``-I`` folder)."""

STUB_MODULES = ("prefixd_pb2.py", "prefixd_pb2_grpc.py", "prefixd_pb2.pyi")
"""The files protoc writes into ``<out>/prefixd/v1/`` (the .pyi types the messages)."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def proto_root_candidates() -> list[str]:
    """Folders that may hold ``prefixd/v1/prefixd.proto``, most specific first.

    ``PREFIXD_PROTO`` (as in the daemon's tests), then ``clients/python/proto`` (the copy an
    sdist carries), then the repository's ``proto/`` folder.
    """
    out = []
    env = os.environ.get("PREFIXD_PROTO")
    if env:
        out.append(env)
    client_root = os.path.dirname(_PACKAGE_DIR)  # clients/python
    out.append(os.path.join(client_root, "proto"))
    out.append(os.path.join(client_root, "..", "..", "proto"))
    return [os.path.abspath(p) for p in out]


def find_proto_root(candidates: Optional[Iterable[str]] = None) -> str:
    """Returns the first candidate folder that holds the proto file, or raises FileNotFoundError."""
    tried = list(candidates) if candidates is not None else proto_root_candidates()
    for root in tried:
        if os.path.isfile(os.path.join(root, PROTO_FILE)):
            return root
    raise FileNotFoundError(
        f"cannot find {PROTO_FILE} in any of: {', '.join(tried)} "
        "(set PREFIXD_PROTO to the folder that holds prefixd/v1/prefixd.proto)")


def run_protoc(proto_root: str, out_dir: str) -> None:
    """Runs grpc_tools' protoc on the proto file: writes ``out_dir/prefixd/v1/prefixd_pb2.py``,
    ``prefixd_pb2.pyi`` and ``prefixd_pb2_grpc.py``."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "generating the prefixd gRPC stubs needs grpcio-tools "
            "(pip install grpcio-tools==1.66.2), or install the package: "
            "pip install clients/python") from e
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_dir, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
            os.path.join(proto_root, PROTO_FILE)]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with status {rc}: {' '.join(args)}")
    for name in STUB_MODULES:
        if not os.path.isfile(os.path.join(out_dir, "prefixd", "v1", name)):
            raise RuntimeError(f"protoc did not write prefixd/v1/{name} into {out_dir}")


def _tool_versions() -> str:
    try:
        from grpc_tools import grpc_version
        tools = grpc_version.VERSION
    except ImportError:  # pragma: no cover
        tools = "none"
    try:
        import google.protobuf
        pb = google.protobuf.__version__
    except ImportError:  # pragma: no cover
        pb = "none"
    return f"grpcio-tools={tools} protobuf={pb} python={sys.version_info[0]}.{sys.version_info[1]}"


def _cache_base() -> list[str]:
    """Folders the cache may live in: PREFIXD_STUBS_DIR, the XDG cache, then the temp folder."""
    out = []
    if os.environ.get("PREFIXD_STUBS_DIR"):
        out.append(os.environ["PREFIXD_STUBS_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(os.path.join(xdg, "prefixd", "python-stubs"))
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    out.append(os.path.join(tempfile.gettempdir(), f"prefixd-python-stubs-{uid}"))
    return out


def ensure_stubs(proto_root: Optional[str] = None) -> str:
    """Makes sure generated stubs exist in the cache; returns the folder holding the modules.

    The folder is ``<cache>/<digest>/prefixd/v1``, where the digest covers the proto's bytes and
    the versions of grpcio-tools, protobuf and Python. A fresh generation goes into a private
    temporary folder first and is renamed into place, so concurrent imports never see half a
    file.
    """
    root = proto_root or find_proto_root()
    with open(os.path.join(root, PROTO_FILE), "rb") as f:
        proto_bytes = f.read()
    digest = hashlib.sha256(proto_bytes + b"\0" + _tool_versions().encode()).hexdigest()[:24]
    errors = []
    for base in _cache_base():
        final = os.path.join(base, digest)
        modules = os.path.join(final, "prefixd", "v1")
        if all(os.path.isfile(os.path.join(modules, m)) for m in STUB_MODULES):
            return modules
        if os.path.isdir(final):  # a damaged copy (files removed by hand): make it anew
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.makedirs(base, exist_ok=True)
            work = tempfile.mkdtemp(prefix=f".{digest}-", dir=base)
        except OSError as e:
            errors.append(f"{base}: {e}")
            continue
        try:
            run_protoc(root, work)
            try:
                os.rename(work, final)
            except OSError:
                # another process won the race; its copy is as good as ours
                if not os.path.isdir(modules):
                    raise
        finally:
            if os.path.isdir(work):
                shutil.rmtree(work, ignore_errors=True)
        return modules
    raise OSError("no writable folder for the generated prefixd stubs: " + "; ".join(errors))
