"""kvctl against a real prefixd (synthetic model): every command, its output, and its exit
codes (0 done, 1 refused by the server, 2 usage, 3 unreachable)."""
import os
import subprocess

import pytest

from conftest import Daemon

ADMIN = "kvctl-test-admin-key-0123456789"


def kv(d, *args, key=None):
    env = dict(os.environ, PREFIXD_ADDRESS=d.target if d else "127.0.0.1:1")
    env.pop("PREFIXD_API_KEY", None)
    if key:
        env["PREFIXD_API_KEY"] = key
    p = subprocess.run([os.environ["KVCTL_BIN"], *args], capture_output=True, text=True,
                       env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def daemon(tiny_model, data_dir):
    if not os.environ.get("KVCTL_BIN"):
        pytest.skip("KVCTL_BIN not set")
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    yield d
    assert d.stop() == 0


def test_kvctl_end_to_end(daemon):
    rc, out, _ = kv(daemon, "health")
    assert rc == 0 and out.strip() == "serving"
    rc, key, _ = kv(daemon, "tenants", "create", "acme", key=ADMIN)
    key = key.strip()
    assert rc == 0 and key.startswith("pfx-")
    rc, out, _ = kv(daemon, "tenants", "list", key=ADMIN)
    assert rc == 0 and out.startswith("acme")
    rc, out, _ = kv(daemon, "warm", "a system prompt worth keeping. " * 8, "--pin-ttl", "60",
                    key=key)
    assert rc == 0, out
    pid = out.split()[0]
    assert len(pid) == 32
    rc, out, _ = kv(daemon, "lookup", "a system prompt worth keeping. " * 8, key=key)
    assert rc == 0 and out.split()[0] == out.split()[2]  # "N of N tokens cached"
    rc, out, _ = kv(daemon, "ls", key=key)
    assert rc == 0 and pid in out and "yes" in out.splitlines()[1]
    rc, out, _ = kv(daemon, "stats", key=key)
    assert rc == 0 and "tier device" in out and "tenant acme" in out
    assert kv(daemon, "unpin", pid, key=key)[0] == 0
    rc, out, _ = kv(daemon, "evict", pid, key=key)
    assert rc == 0 and "device 0" not in out
    # refused by the server: exit 1 and one line naming the status
    rc, _, err = kv(daemon, "pin", pid, key=key)
    assert rc == 1 and err.startswith("kvctl: NOT_FOUND:") and err.count("\n") == 1
    rc, _, err = kv(daemon, "stats")
    assert rc == 1 and "UNAUTHENTICATED" in err
    rc, _, err = kv(daemon, "tenants", "list", key=key)
    assert rc == 1 and "PERMISSION_DENIED" in err
    # usage: exit 2
    assert kv(daemon, "frobnicate")[0] == 2
    assert kv(daemon, "evict", key=key)[0] == 2
    assert kv(daemon, "pin", key=key)[0] == 2
    assert kv(daemon, "ls", "--limit", "x", key=key)[0] == 2
    assert kv(daemon, "tenants", "delete", "acme", key=ADMIN)[0] == 0


def test_kvctl_unreachable(tiny_model):
    if not os.environ.get("KVCTL_BIN"):
        pytest.skip("KVCTL_BIN not set")
    rc, _, err = kv(None, "stats")
    assert rc == 3 and err.startswith("kvctl: cannot reach prefixd")
