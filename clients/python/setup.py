"""Build hooks of the prefixd Python package; the metadata lives in pyproject.toml.

``build_py`` runs grpc_tools' protoc on ``proto/prefixd/v1/prefixd.proto`` and writes
``prefixd/v1/prefixd_pb2.py`` and ``prefixd_pb2_grpc.py`` into the build tree, so wheels carry
the stubs while the source tree never holds them. ``sdist`` copies the proto into the archive
(``proto/prefixd/v1/prefixd.proto``), so a wheel can be built from the sdist alone.

The proto is looked for in ``$PREFIXD_PROTO``, then ``./proto`` (an unpacked sdist), then
``../../proto`` (the prefixd repository). The protoc call is the one ``prefixd._protoc`` makes
when the package is used from the source tree.
"""
import importlib.util
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))


def _protoc_module():
    """prefixd/_protoc.py, loaded by path: importing the package would need the stubs."""
    spec = importlib.util.spec_from_file_location(
        "_prefixd_build_protoc", os.path.join(HERE, "prefixd", "_protoc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _proto_root(protoc):
    candidates = [os.environ.get("PREFIXD_PROTO", ""), os.path.join(HERE, "proto"),
                  os.path.join(HERE, "..", "..", "proto")]
    return protoc.find_proto_root(os.path.abspath(c) for c in candidates if c)


class BuildPyWithStubs(build_py):
    """build_py, then the generated stubs into the build tree (build/lib/prefixd/v1/)."""

    def run(self):
        super().run()
        protoc = _protoc_module()
        root = _proto_root(protoc)
        self.announce(f"generating prefixd gRPC stubs from {root}", level=2)
        protoc.run_protoc(root, self.build_lib)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        v1 = os.path.join(self.build_lib, "prefixd", "v1")
        return outputs + [os.path.join(v1, m) for m in _protoc_module().STUB_MODULES]


class SdistWithProto(sdist):
    """sdist that carries proto/prefixd/v1/prefixd.proto (the package's only input)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        protoc = _protoc_module()
        src = os.path.join(_proto_root(protoc), protoc.PROTO_FILE)
        dst = os.path.join(base_dir, "proto", protoc.PROTO_FILE)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto})
