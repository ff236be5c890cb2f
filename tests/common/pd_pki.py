"""Test certificates from the openssl command: a CA, a server certificate it signed for
127.0.0.1 and localhost (ECDSA P-256, two days), and an unrelated CA with its key, which signed
a second server certificate (the renewal of a reload test), and a client certificate the first
CA signed (mutual TLS). Shared by the daemon's TLS tests and the Python client's."""
import os
import subprocess

FILES = ("ca.pem", "server.pem", "server.key", "other-ca.pem", "other-ca.key", "server2.pem",
         "server2.key", "client.pem", "client.key")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory):
    """Writes the files into directory; returns {file name: path} for FILES."""
    d = str(directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=prefixd {ca}", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for server, ca in (("server", "ca"), ("server2", "other-ca"), ("client", "ca")):
        _openssl("req", *ec, "-keyout", f"{server}.key", "-out", f"{server}.csr", "-subj",
                 "/CN=localhost", cwd=d)
        _openssl("x509", "-req", "-in", f"{server}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-CAcreateserial", "-out", f"{server}.pem", "-days", "2",
                 "-extfile", "san.ext", cwd=d)
    return {name: os.path.join(d, name) for name in FILES}
