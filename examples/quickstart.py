#!/usr/bin/env python3
"""Two chat requests over the same system prompt against a running prefixd; the second one
reports how many of its prompt tokens came from the cache. Uses only grpcio: the Python stubs
are generated from proto/prefixd/v1/prefixd.proto into a temporary folder.

    scripts/run &                                  # the daemon, on 127.0.0.1:7878
    .venv/bin/python examples/quickstart.py [ADDRESS] [API_KEY]
"""
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
out = tempfile.mkdtemp()
protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
             os.path.join(root, "prefixd/v1/prefixd.proto")])
sys.path.insert(0, out)
pb = importlib.import_module("prefixd.v1.prefixd_pb2")
pb_grpc = importlib.import_module("prefixd.v1.prefixd_pb2_grpc")

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7878"
metadata = [("authorization", f"Bearer {sys.argv[2]}")] if len(sys.argv) > 2 else []
stub = pb_grpc.PrefixdStub(grpc.insecure_channel(address))

SYSTEM = ("You are the assistant of a small bicycle shop in Utrecht. The shop sells city bikes, "
          "road bikes and cargo bikes, repairs every brand, and is open Monday to Saturday from "
          "9:00 to 18:00. Answer in one or two friendly sentences.")

for question in ["When are you open on Saturday?", "Do you repair cargo bikes?"]:
    request = pb.GenerateRequest(
        prompt=pb.Prompt(chat=pb.ChatMessages(messages=[
            pb.ChatMessage(role="system", content=SYSTEM),
            pb.ChatMessage(role="user", content=question)])),
        max_tokens=48)
    print(f"> {question}\n", end="", flush=True)
    for msg in stub.Generate(request, metadata=metadata, timeout=120):
        print(msg.text, end="", flush=True)
        if msg.finish_reason:
            u, t = msg.usage, msg.timings
            print(f"\n[prompt {u.prompt_tokens} tokens, {u.cached_tokens} from the cache; "
                  f"first token after {t.ttft_ms:.0f} ms]\n")
