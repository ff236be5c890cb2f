"""Fixtures of the security suite. The daemon harness and the fixtures are shared with
tests/stress (pd_harness.py, pd_fixtures.py there: stubs, a real prefixd on loopback, helpers)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "stress"))
from pd_fixtures import data_dir, q51_model, tiny_long_model, tiny_model  # noqa: E402,F401
