"""Fixtures of the stress suite (see pd_harness.py for the daemon and the helpers)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pd_fixtures import data_dir, q51_model, tiny_long_model, tiny_model  # noqa: E402,F401
