"""TLS on the daemon's TCP listeners (--tls-cert, --tls-key), end to end with stock clients:
grpcio's secure channel for gRPC, OpenAI's Python SDK (httpx) for the HTTP API, Python's ssl
module for handshakes that must fail. Certificates come from the openssl command at test time
(tests/common/pd_pki.py): a test CA, a server certificate it signed, and an unrelated CA.

What must hold: the same greedy tokens over TLS as over the plaintext Unix socket, with the
prefix cache shared between them; every bad client (plaintext, an untrusted CA, the wrong ALPN,
garbage, silence) is refused on its own connection while the daemon keeps serving; a bad TLS
configuration stops the daemon at start with exit code 2 and one line."""
import http.client
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import grpc
import httpx
import openai
import pytest

from conftest import Daemon, chat, generate, pb, pb_grpc
from pd_pki import make_pki

SYSTEM = "You are the help desk of a public library. Answer in one sentence. " * 6


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def served(tiny_model, data_dir, pki):
    unix = os.path.join(data_dir, "s.sock")
    d = Daemon(tiny_model, data_dir, unix=unix,
               extra=["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                      "--openai-listen", "127.0.0.1:0", "--metrics-listen", "none"])
    d.unix = unix
    d.openai_port = int(d.log_text().split("openai_port=")[1].split()[0])
    yield d
    assert d.stop() == 0


def tls_channel(d, ca, **kw):
    ch = grpc.secure_channel(d.target, grpc.ssl_channel_credentials(root_certificates=read(ca)),
                             **kw)
    d.channels.append(ch)
    return ch


def tls_stub(d, pki):
    return pb_grpc.PrefixdStub(tls_channel(d, pki["ca.pem"]))


def test_grpc_over_tls_same_tokens_and_shared_cache(served, pki):
    assert "tls=on" in served.log_text()
    stub = tls_stub(served, pki)
    prompt = chat(("system", SYSTEM), ("user", "When do you open?"))
    _, ids_tls, final = generate(stub, prompt, max_tokens=24)
    assert final.usage.cached_tokens == 0
    plain = pb_grpc.PrefixdStub(grpc.insecure_channel("unix:" + served.unix))
    _, ids_plain, final_plain = generate(plain, prompt, max_tokens=24)
    assert ids_plain == ids_tls
    # the Unix socket's request reused what the TLS one computed: one cache for both
    assert final_plain.usage.cached_tokens > 0
    # a large message in many records each way: a 1.5 MB prompt tokenized and counted
    text = "the quick brown fox jumps over the lazy dog " * 35000
    req = pb.TokenizeRequest(prompt=pb.Prompt(text=text))
    n_tls = len(stub.Tokenize(req, timeout=120).token_ids)
    n_plain = len(plain.Tokenize(req, timeout=120).token_ids)
    assert n_tls == n_plain > 100000


def test_concurrent_streams_on_one_tls_connection(served, pki):
    stub = tls_stub(served, pki)
    results, errors = [None] * 8, []

    def run(i):
        try:
            q = f"Question {i}: is the reading room open on Sundays?"
            results[i] = generate(stub, chat(("system", SYSTEM), ("user", q)), max_tokens=32)[1]
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r for r in results)


def handshake(port, ca, alpn=None):
    """A TLS handshake by Python's ssl module; returns the ALPN protocol selected."""
    ctx = ssl.create_default_context(cafile=ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.selected_alpn_protocol()


def closed_within(port, data, seconds):
    """Sends data on a fresh connection and reads until the server closes it; the time taken."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
        if data:
            s.sendall(data)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - t0


def test_bad_clients_are_refused_and_the_daemon_keeps_serving(served, pki):
    port = served.port
    # plaintext gRPC to the TLS port
    with pytest.raises(grpc.RpcError) as e:
        plain = pb_grpc.PrefixdStub(grpc.insecure_channel(served.target))
        plain.Health(pb.HealthRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # a client that trusts another CA
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.PrefixdStub(tls_channel(served, pki["other-ca.pem"])).Health(pb.HealthRequest(),
                                                                      timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # ALPN: the gRPC port speaks h2 only, the OpenAI port http/1.1 only; no ALPN is served
    assert handshake(port, pki["ca.pem"], ["h2"]) == "h2"
    assert handshake(port, pki["ca.pem"]) is None
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        handshake(port, pki["ca.pem"], ["http/1.1"])
    assert handshake(served.openai_port, pki["ca.pem"], ["h2", "http/1.1"]) == "http/1.1"
    with pytest.raises(ssl.SSLError):
        handshake(served.openai_port, pki["ca.pem"], ["h2"])
    # garbage, a plaintext HTTP/2 preface, and silence: each connection closed, soon
    assert closed_within(port, os.urandom(4096), 10) < 10
    assert closed_within(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 10) < 10
    assert closed_within(port, b"", 10) < 10  # the handshake timeout (3 s)
    assert closed_within(served.openai_port, b"GET /v1/models HTTP/1.1\r\n\r\n", 10) < 10
    # and the daemon still serves, over TLS
    resp = tls_stub(served, pki).Health(pb.HealthRequest(), timeout=30)
    assert resp.status == pb.HealthResponse.STATUS_SERVING


def test_openai_api_over_https(served, pki):
    http_client = httpx.Client(verify=ssl.create_default_context(cafile=pki["ca.pem"]))
    client = openai.OpenAI(base_url=f"https://127.0.0.1:{served.openai_port}/v1",
                           api_key="unused", max_retries=0, timeout=60, http_client=http_client)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hours?"}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16,
                                           temperature=0)
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(
                           model="tiny", messages=msgs, max_tokens=16, temperature=0,
                           stream=True) if c.choices)
    assert whole.choices[0].message.content == streamed
    assert whole.usage.completion_tokens > 0
    # the second identical request was served from the cache the first one filled
    again = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16,
                                           temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    http_client.close()
    # keep-alive, then "Connection: close" (the answer whole before TLS's close_notify)
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    conn = http.client.HTTPSConnection("127.0.0.1", served.openai_port, context=ctx, timeout=30)
    for headers in ({}, {"Connection": "close"}):
        conn.request("GET", "/v1/models", headers=headers)
        r = conn.getresponse()
        assert r.status == 200 and b'"object":"list"' in r.read().replace(b" ", b"")
    conn.close()


@pytest.mark.parametrize("case", ["cert_only", "missing", "mismatch", "garbage", "no_listener"])
def test_bad_tls_configuration_stops_the_start(case, tiny_model, data_dir, pki):
    garbage = os.path.join(data_dir, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    args = {
        "cert_only": ["--tls-cert", pki["server.pem"]],
        "missing": ["--tls-cert", os.path.join(data_dir, "nope.pem"), "--tls-key",
                    pki["server.key"]],
        "mismatch": ["--tls-cert", pki["server.pem"], "--tls-key", pki["other-ca.key"]],
        "garbage": ["--tls-cert", garbage, "--tls-key", pki["server.key"]],
        "no_listener": ["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                        "--listen", "none", "--unix", os.path.join(data_dir, "s.sock")],
    }[case]
    expect = {"cert_only": "go together", "missing": "No such file", "mismatch": "does not match",
              "garbage": "expected a PEM certificate chain", "no_listener": "no TCP listener"}
    p = subprocess.run([os.environ["PREFIXD_BIN"], "--model", tiny_model, "--data-dir", data_dir,
                        "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefixd: "), p.stderr
    assert expect[case] in lines[0], lines[0]


def test_kvctl_over_tls(served, pki):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFIXD_KEY", "PREFIXD_API_KEY", "PREFIXD_ADDR", "PREFIXD_TLS_CA")}
    kvctl = [os.environ["KVCTL_BIN"], "--addr", served.target]

    def run(*args, **extra_env):
        return subprocess.run([*kvctl, *args], capture_output=True, text=True, timeout=60,
                              env={**env, **extra_env})

    ok = run("--tls-ca", pki["ca.pem"], "health")
    assert ok.returncode == 0, ok.stderr
    assert run("health", PREFIXD_TLS_CA=pki["ca.pem"]).returncode == 0
    plain = run("health")  # plaintext to the TLS port: unreachable, in one line
    assert plain.returncode == 3 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    untrusted = run("--tls-ca", pki["other-ca.pem"], "health")
    assert untrusted.returncode == 3, untrusted.stderr
    assert "not trusted" in untrusted.stderr and len(untrusted.stderr.splitlines()) == 1
    # the Unix socket stays plaintext, --tls or not
    sock = subprocess.run([os.environ["KVCTL_BIN"], "--addr", "unix:" + served.unix, "--tls",
                           "health"], capture_output=True, text=True, timeout=60, env=env)
    assert sock.returncode == 0, sock.stderr


def wait_for_log(d, text, timeout=30):
    deadline = time.time() + timeout
    while text not in d.log_text():
        assert time.time() < deadline, f"no '{text}' in the log: {d.log_text()[-2000:]}"
        time.sleep(0.05)


def test_sighup_reloads_the_certificate(tiny_model, data_dir, pki):
    """A renewed certificate (here: signed by another CA) is taken on SIGHUP by new
    connections; a connection made before goes on; files that fail to load are logged and the
    certificate in use stays."""
    cert, key = os.path.join(data_dir, "tls.pem"), os.path.join(data_dir, "tls.key")
    for src, dst in ((pki["server.pem"], cert), (pki["server.key"], key)):
        with open(dst, "wb") as f:
            f.write(read(src))
    d = Daemon(tiny_model, data_dir, extra=["--tls-cert", cert, "--tls-key", key,
                                            "--openai-listen", "127.0.0.1:0",
                                            "--metrics-listen", "none"])
    try:
        http_port = int(d.log_text().split("openai_port=")[1].split()[0])
        before = tls_stub(d, pki)
        assert before.Health(pb.HealthRequest(), timeout=30).status == \
            pb.HealthResponse.STATUS_SERVING
        for src, dst in ((pki["server2.pem"], cert), (pki["server2.key"], key)):
            with open(dst, "wb") as f:
                f.write(read(src))
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "TLS certificate reloaded")
        renewed = pb_grpc.PrefixdStub(tls_channel(d, pki["other-ca.pem"]))
        assert renewed.Health(pb.HealthRequest(), timeout=30).status == \
            pb.HealthResponse.STATUS_SERVING
        assert handshake(http_port, pki["other-ca.pem"]) is None  # the OpenAI port too
        with pytest.raises(ssl.SSLError):
            handshake(d.port, pki["ca.pem"])  # new connections: the old CA no longer fits
        assert before.Health(pb.HealthRequest(), timeout=30).status == \
            pb.HealthResponse.STATUS_SERVING  # the old connection goes on
        # a broken renewal: logged, and the certificate in use stays
        with open(cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ntruncated\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "TLS certificate not reloaded")
        assert handshake(d.port, pki["other-ca.pem"], ["h2"]) == "h2"
    finally:
        assert d.stop() == 0


def test_mutual_tls(tiny_model, data_dir, pki):
    """--tls-client-ca: a client must present a certificate the given CA signed, on both ports;
    one without, or with a certificate of another CA, is refused, and the daemon serves on."""
    d = Daemon(tiny_model, data_dir, unix=os.path.join(data_dir, "s.sock"),
               extra=["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                      "--tls-client-ca", pki["ca.pem"], "--openai-listen", "127.0.0.1:0",
                      "--metrics-listen", "none"])
    try:
        assert "tls=mutual" in d.log_text()
        http_port = int(d.log_text().split("openai_port=")[1].split()[0])

        def health(cert=None):
            creds = grpc.ssl_channel_credentials(
                read(pki["ca.pem"]), *((read(cert[1]), read(cert[0])) if cert else ()))
            ch = grpc.secure_channel(d.target, creds)
            d.channels.append(ch)
            return pb_grpc.PrefixdStub(ch).Health(pb.HealthRequest(), timeout=10).status

        client, stranger = (pki["client.pem"], pki["client.key"]), (pki["server2.pem"],
                                                                     pki["server2.key"])
        assert health(client) == pb.HealthResponse.STATUS_SERVING
        for cert in (None, stranger):
            with pytest.raises(grpc.RpcError) as e:
                health(cert)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # the OpenAI port asks too
        ctx = ssl.create_default_context(cafile=pki["ca.pem"])
        ctx.load_cert_chain(*client)
        conn = http.client.HTTPSConnection("127.0.0.1", http_port, context=ctx, timeout=30)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        conn.close()
        bare = http.client.HTTPSConnection("127.0.0.1", http_port, timeout=30,
                                           context=ssl.create_default_context(
                                               cafile=pki["ca.pem"]))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            bare.request("GET", "/v1/models")
            bare.getresponse()
        bare.close()
        # kvctl
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXD_")}
        kv = [os.environ["KVCTL_BIN"], "--addr", d.target, "--tls-ca", pki["ca.pem"]]
        ok = subprocess.run([*kv, "--tls-client-cert", client[0], "--tls-client-key", client[1],
                             "health"], capture_output=True, text=True, timeout=60, env=env)
        assert ok.returncode == 0, ok.stderr
        no = subprocess.run([*kv, "health"], capture_output=True, text=True, timeout=60, env=env)
        assert no.returncode == 3 and len(no.stderr.strip().splitlines()) == 1, no.stderr
        assert health(client) == pb.HealthResponse.STATUS_SERVING
    finally:
        assert d.stop() == 0
    # a client CA without a certificate of the daemon's own, or one that does not exist
    for args, expect in ((["--tls-client-ca", pki["ca.pem"]], "needs --tls-cert"),
                         (["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                           "--tls-client-ca", os.path.join(data_dir, "none.pem")], "client CA")):
        p = subprocess.run([os.environ["PREFIXD_BIN"], "--model", tiny_model, "--data-dir",
                            data_dir, "--listen", "127.0.0.1:0", *args], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and expect in p.stderr and len(p.stderr.splitlines()) == 1, \
            p.stderr
