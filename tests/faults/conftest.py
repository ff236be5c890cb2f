"""Fixtures of the fault-injection suite. The daemon harness is shared with tests/stress
(pd_harness.py there); failalloc.py here speaks to libpd_failalloc.so."""
import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "stress"))
import pd_harness  # noqa: E402


@pytest.fixture
def q51_model():
    path = pd_harness.q51_model()
    if not path or not os.path.exists(path):
        pytest.skip("tiny-q5_1.gguf not built")
    return path


@pytest.fixture
def failalloc_lib():
    path = os.environ.get("PD_FAILALLOC_LIB")
    if not path or not os.path.exists(path):
        pytest.skip("PD_FAILALLOC_LIB (libpd_failalloc.so) not built")
    return path


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="prefixd-faults-") as d:
        yield d
