"""The pytest fixtures of the suites built on pd_harness (stress, security, faults): the
synthetic models, skipped when they are not built, and a data directory per test named after
its suite. Each suite's conftest.py puts this folder on sys.path and imports them."""
import os
import tempfile

import pytest

import pd_harness


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
def tiny_long_model():
    path = pd_harness.tiny_long_model()
    if not path or not os.path.exists(path):
        pytest.skip("tiny-long.gguf not built")
    return path


@pytest.fixture
def data_dir(request):
    suite = os.path.basename(os.path.dirname(str(request.path)))
    with tempfile.TemporaryDirectory(prefix=f"prefixd-{suite}-") as d:
        yield d
