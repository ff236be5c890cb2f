"""Fixtures of the fault-injection suite. The daemon harness and the model fixtures are shared
with tests/stress (pd_harness.py, pd_fixtures.py there); failalloc.py here speaks to
libpd_failalloc.so."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "stress"))
from pd_fixtures import data_dir, q51_model  # noqa: E402,F401


@pytest.fixture
def failalloc_lib():
    path = os.environ.get("PD_FAILALLOC_LIB")
    if not path or not os.path.exists(path):
        pytest.skip("PD_FAILALLOC_LIB (libpd_failalloc.so) not built")
    return path
