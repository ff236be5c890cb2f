"""The client's ``tls`` argument against a daemon started with --tls-cert/--tls-key: the sync and
asyncio clients and Admin over TLS verified against a test CA (or ``$PREFIXD_TLS_CA``), the same
tokens as over the daemon's plaintext Unix socket, and the errors a user meets (plaintext to a TLS
port, an untrusted CA, TLS to a Unix socket). Certificates come from the openssl command."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
from typing import Dict, Iterator

import pytest

import prefixd
from conftest import ADMIN_KEY, Daemon

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "tests", "common"))

MSGS = [{"role": "system", "content": "You answer questions about trains. " * 6},
        {"role": "user", "content": "Is the 8:15 on time?"}]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Dict[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make test certificates")
    from pd_pki import make_pki
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_daemon(tiny_model: str, data_dir: str, pki: Dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN_KEY,
               unix=os.path.join(data_dir, "prefixd.sock"),
               extra=["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                      "--metrics-listen", "none"])
    yield d
    assert d.stop() == 0, d.log_text()[-2000:]


def test_sync_client_and_admin_over_tls(tls_daemon: Daemon, pki: Dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch):
    admin = prefixd.Admin(tls_daemon.target, key=ADMIN_KEY, timeout=60, tls=pki["ca.pem"])
    key = admin.create_tenant("trains").api_key
    admin.close()
    c = tls_daemon.client(key=key, tls=pki["ca.pem"])
    over_tls = c.chat(MSGS, max_tokens=12, ignore_eos=True)
    assert over_tls.usage.cached_tokens == 0
    # the plaintext Unix socket, same tenant: the same tokens, from the cache TLS filled
    plain = tls_daemon.client(key=key, target="unix:" + tls_daemon.unix)
    again = plain.chat(MSGS, max_tokens=12, ignore_eos=True)
    assert again.token_ids == over_tls.token_ids and again.usage.cached_tokens > 0
    # $PREFIXD_TLS_CA when tls is not given
    monkeypatch.setenv("PREFIXD_TLS_CA", pki["ca.pem"])
    assert tls_daemon.client(key=key).health() is prefixd.HealthStatus.SERVING


def test_async_client_over_tls(tls_daemon: Daemon, pki: Dict[str, str]):
    async def main():
        admin = prefixd.AsyncAdmin(tls_daemon.target, key=ADMIN_KEY, tls=pki["ca.pem"])
        key = (await admin.create_tenant("async-trains")).api_key
        await admin.close()
        async with prefixd.AsyncClient(tls_daemon.target, key=key, timeout=60,
                                       tls=pki["ca.pem"]) as c:
            return await asyncio.gather(*(c.chat(MSGS, max_tokens=8, ignore_eos=True)
                                          for _ in range(3)))
    results = asyncio.run(main())
    assert len({tuple(r.token_ids) for r in results}) == 1


def test_tls_mistakes_are_clear_errors(tls_daemon: Daemon, pki: Dict[str, str]):
    with pytest.raises(prefixd.errors.Unavailable):  # plaintext to the TLS port
        tls_daemon.client(tls=False, timeout=10).health()
    with pytest.raises(prefixd.errors.Unavailable):  # a CA that did not sign the certificate
        tls_daemon.client(tls=pki["other-ca.pem"], timeout=10).health()
    with pytest.raises(ValueError, match="Unix socket is plaintext"):
        prefixd.Client("unix:" + tls_daemon.unix, tls=pki["ca.pem"])
    with pytest.raises(FileNotFoundError):
        prefixd.Client(tls_daemon.target, tls=os.path.join(os.path.dirname(pki["ca.pem"]), "x"))
    # the daemon is still serving
    assert tls_daemon.client(tls=pki["ca.pem"]).health() is prefixd.HealthStatus.SERVING


def test_client_certificate(tiny_model: str, data_dir: str, pki: Dict[str, str],
                            monkeypatch: pytest.MonkeyPatch):
    """A daemon started with --tls-client-ca: tls_client_cert (or $PREFIXD_TLS_CLIENT_CERT and
    $PREFIXD_TLS_CLIENT_KEY) gets in, nothing else does."""
    d = Daemon(tiny_model, data_dir, extra=["--tls-cert", pki["server.pem"], "--tls-key",
                                            pki["server.key"], "--tls-client-ca", pki["ca.pem"],
                                            "--metrics-listen", "none"])
    try:
        cert = (pki["client.pem"], pki["client.key"])
        assert d.client(tls=pki["ca.pem"], tls_client_cert=cert).health() is \
            prefixd.HealthStatus.SERVING
        with pytest.raises(prefixd.errors.Unavailable):
            d.client(tls=pki["ca.pem"], timeout=10).health()
        with pytest.raises(ValueError, match="needs TLS"):
            prefixd.Client(d.target, tls=False, tls_client_cert=cert)
        monkeypatch.setenv("PREFIXD_TLS_CA", pki["ca.pem"])
        monkeypatch.setenv("PREFIXD_TLS_CLIENT_CERT", cert[0])
        monkeypatch.setenv("PREFIXD_TLS_CLIENT_KEY", cert[1])
        assert d.client().health() is prefixd.HealthStatus.SERVING
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]
