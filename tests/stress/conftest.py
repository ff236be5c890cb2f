"""Fixtures of the stress suite (see pd_harness.py for the daemon and the helpers)."""
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pd_harness  # noqa: E402


@pytest.fixture
def tiny_model():
    path = pd_harness.tiny_model()
    if not path or not os.path.exists(path):
        pytest.skip("PD_TINY_MODEL not built")
    return path


@pytest.fixture
def q51_model():
    path = pd_harness.q51_model()
    if not path or not os.path.exists(path):
        pytest.skip("tiny-q5_1.gguf not built")
    return path


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="prefixd-stress-") as d:
        yield d
