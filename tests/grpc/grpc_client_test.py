#!/usr/bin/env python3
"""A stock gRPC client (grpcio, stubs generated from proto/prefixd/v1/prefixd.proto at test time)
against prefixd's gRPC transport: a real call, an unknown method, a malformed message, an
oversized message, 200 concurrent calls, and garbage bytes on a raw socket, after which the
server must still serve.

    grpc_client_test.py SERVER_BINARY PROTO_ROOT
"""
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_tools import protoc


def main():
    server_bin, proto_root = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_root, "prefixd/v1/prefixd.proto")])
    assert rc == 0, "stub generation failed"
    sys.path.insert(0, out)
    pb = importlib.import_module("prefixd.v1.prefixd_pb2")
    pb_grpc = importlib.import_module("prefixd.v1.prefixd_pb2_grpc")

    srv = subprocess.Popen([server_bin], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[1])
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.PrefixdStub(ch)
            r = stub.Health(pb.HealthRequest(), timeout=10)
            assert r.status == pb.HealthResponse.STATUS_SERVING, r
            print("ok: Health -> SERVING")
            try:
                stub.Tokenize(pb.TokenizeRequest(), timeout=10)
                raise AssertionError("Tokenize should be UNIMPLEMENTED here")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
                assert "Tokenize" in e.details(), e.details()
                print("ok: an unrouted method -> UNIMPLEMENTED:", e.details())
            raw = ch.unary_unary("/prefixd.v1.Prefixd/Health", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
            try:
                raw(b"\xff\xff\xff\xff", timeout=10)
                raise AssertionError("garbage should be INVALID_ARGUMENT")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                print("ok: a malformed message -> INVALID_ARGUMENT:", e.details())
            try:
                raw(b"\x00" * (5 << 20), timeout=30)
                raise AssertionError("5 MiB should be RESOURCE_EXHAUSTED")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            print("ok: a 5 MiB message -> RESOURCE_EXHAUSTED")
            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(lambda _: stub.Health(pb.HealthRequest(), timeout=30).status,
                                        range(200)))
            assert all(s == pb.HealthResponse.STATUS_SERVING for s in results)
            print("ok: 200 concurrent calls")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(4096))
            try:
                s.recv(4096)
            except OSError:
                pass
        with grpc.insecure_channel(target) as ch:
            r = pb_grpc.PrefixdStub(ch).Health(pb.HealthRequest(), timeout=10)
            assert r.status == pb.HealthResponse.STATUS_SERVING
        print("ok: garbage on a raw socket, then the server still serves")
    finally:
        srv.send_signal(signal.SIGTERM)
        code = srv.wait(timeout=30)
    assert code == 0, f"server exited with {code}"
    print("ok: clean exit on SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
