"""Streaming clients of the two servers, both on one asyncio event loop.

prefixd: grpc.aio, with stubs generated from proto/ by grpc_tools.protoc into a temporary folder
at import time. llama-server: plain asyncio streams speaking HTTP/1.1 (one connection per
request, `Connection: close`), reading its /completion Server-Sent Events out of the chunked
body.

Each request returns a Result: when it was sent, when each chunk of tokens arrived, how many
prompt tokens the server says it took from its cache.
"""
import asyncio
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))


def load_stubs(proto_root=os.path.join(ROOT, "proto")):
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="prefixd-bench-stubs-")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}",
                      f"--grpc_python_out={out}",
                      os.path.join(proto_root, "prefixd/v1/prefixd.proto")])
    if rc != 0:
        raise RuntimeError("stub generation from proto/ failed")
    sys.path.insert(0, out)
    return (importlib.import_module("prefixd.v1.prefixd_pb2"),
            importlib.import_module("prefixd.v1.prefixd_pb2_grpc"))


pb, pb_grpc = load_stubs()
import grpc  # noqa: E402  (after the stubs, which import it too)


@dataclass
class Result:
    rid: int
    tenant: str
    n_prompt: int
    send: float = 0.0
    chunks: list = field(default_factory=list)  # (arrival time, tokens in the chunk)
    done: float = 0.0
    n_out: int = 0
    cached: int = -1          # prompt tokens the server reused; -1 = unknown
    by_tier: tuple = ()       # (device, host, disk) for prefixd
    server_ttft_ms: float = -1.0
    server_queue_ms: float = -1.0
    error: str = ""

    @property
    def ttft(self):
        return self.chunks[0][0] - self.send if self.chunks else None

    def itls(self):
        """Inter-token gaps: a chunk of k tokens arriving g after the previous chunk counts as
        k gaps of g/k (tokens beyond the first in the first chunk have no gap)."""
        out = []
        for (t0, _), (t1, k) in zip(self.chunks, self.chunks[1:]):
            out += [(t1 - t0) / k] * k
        return out


class PrefixdClient:
    """A few HTTP/2 channels (requests spread round robin), per-tenant API keys."""

    def __init__(self, target, n_channels=4):
        self.channels = [grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20)]) for _ in range(n_channels)]
        self.stubs = [pb_grpc.PrefixdStub(c) for c in self.channels]
        self.admin_stub = pb_grpc.AdminStub(self.channels[0])
        self.keys = {}
        self.next = 0

    async def close(self):
        for c in self.channels:
            await c.close()

    async def create_tenants(self, admin_key, names):
        md = [("authorization", f"Bearer {admin_key}")]
        for n in names:
            r = await self.admin_stub.CreateTenant(pb.CreateTenantRequest(name=n), metadata=md,
                                                   timeout=30)
            self.keys[n] = r.api_key

    def _md(self, tenant):
        return [("authorization", f"Bearer {self.keys[tenant]}")] if tenant in self.keys else []

    async def tokenize(self, text, tenant=None):
        r = await self.stubs[0].Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=text)),
                                         metadata=self._md(tenant), timeout=30)
        return list(r.token_ids)

    async def generate(self, rid, tenant, prompt, n_predict, no_cache=False, timeout=3600):
        res = Result(rid, tenant, len(prompt))
        req = pb.GenerateRequest(
            prompt=pb.Prompt(tokens=pb.TokenIds(ids=prompt)), max_tokens=n_predict,
            sampling=pb.SamplingParams(temperature=0.0, ignore_eos=True),
            cache=pb.CacheOptions(no_cache=no_cache))
        stub = self.stubs[self.next % len(self.stubs)]
        self.next += 1
        res.send = time.perf_counter()
        try:
            call = stub.Generate(req, metadata=self._md(tenant), timeout=timeout)
            async for m in call:
                now = time.perf_counter()
                if m.token_ids:
                    res.chunks.append((now, len(m.token_ids)))
                    res.n_out += len(m.token_ids)
                if m.finish_reason:
                    u, t = m.usage, m.timings
                    res.cached = u.cached_tokens
                    res.by_tier = (u.cached_tokens_by_tier.device, u.cached_tokens_by_tier.host,
                                   u.cached_tokens_by_tier.disk)
                    res.server_ttft_ms, res.server_queue_ms = t.ttft_ms, t.queue_ms
                    if m.finish_reason == pb.FINISH_REASON_ERROR:
                        res.error = "finish_reason ERROR"
                    if u.prompt_tokens != len(prompt):
                        res.error = f"prompt_tokens {u.prompt_tokens} != {len(prompt)}"
        except grpc.aio.AioRpcError as e:
            res.error = f"{e.code().name}: {e.details()}"
        res.done = time.perf_counter()
        return res


class LlamaClient:
    """llama-server's /completion, streamed, over HTTP/1.1 on asyncio streams."""

    def __init__(self, host, port, cache_prompt=True):
        self.host, self.port, self.cache_prompt = host, port, cache_prompt

    async def close(self):
        pass

    async def request(self, method, path, body=None):
        """A whole (non-streamed) request; returns (status, body bytes)."""
        r, w = await asyncio.open_connection(self.host, self.port)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            w.write(self._head(method, path, len(data)) + data)
            await w.drain()
            status, headers = await self._read_head(r)
            out = b"".join([c async for c in self._body(r, headers)])
            return status, out
        finally:
            w.close()

    def _head(self, method, path, n):
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {n}\r\nConnection: close\r\n\r\n").encode()

    @staticmethod
    async def _read_head(r):
        line = await r.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"bad status line {line!r}")
        headers = {}
        while True:
            h = await r.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(parts[1]), headers

    @staticmethod
    async def _body(r, headers):
        """Yields the body's bytes as they arrive (chunked, sized, or to EOF)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await r.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await r.readline()  # the empty trailer section
                    return
                data = await r.readexactly(size)
                await r.readexactly(2)
                yield data
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n:
                yield await r.readexactly(n)
        else:
            while True:
                data = await r.read(65536)
                if not data:
                    return
                yield data

    async def generate(self, rid, tenant, prompt, n_predict, no_cache=False, timeout=3600):
        res = Result(rid, tenant, len(prompt))
        body = json.dumps({"prompt": prompt, "n_predict": n_predict, "stream": True,
                           "cache_prompt": self.cache_prompt and not no_cache,
                           "temperature": 0.0, "ignore_eos": True,
                           "return_tokens": True}).encode()
        res.send = time.perf_counter()
        w = None
        try:
            async with asyncio.timeout(timeout):
                r, w = await asyncio.open_connection(self.host, self.port)
                w.write(self._head("POST", "/completion", len(body)) + body)
                await w.drain()
                status, headers = await self._read_head(r)
                if status != 200:
                    text = b"".join([c async for c in self._body(r, headers)])
                    raise ConnectionError(f"HTTP {status}: {text[:200]!r}")
                buf = b""
                async for data in self._body(r, headers):
                    now = time.perf_counter()
                    buf += data
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        self._event(res, event, now)
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                ValueError) as e:
            res.error = f"{type(e).__name__}: {e}"
        finally:
            if w is not None:
                w.close()
        res.done = time.perf_counter()
        return res

    @staticmethod
    def _event(res, event, now):
        for line in event.split(b"\n"):
            if line.startswith(b"error:"):
                res.error = line[6:].decode(errors="replace").strip()[:200]
                return
            if not line.startswith(b"data:"):
                continue
            msg = json.loads(line[5:])
            k = len(msg.get("tokens") or [])
            if k:
                res.chunks.append((now, k))
                res.n_out += k
            if msg.get("stop"):
                timings = msg.get("timings") or {}
                evaluated = msg.get("tokens_evaluated")
                if evaluated is not None and "prompt_n" in timings:
                    # prompt tokens it did not compute: its cache (the slot's KV) had them
                    res.cached = evaluated - timings["prompt_n"]
                if evaluated is not None and evaluated != res.n_prompt:
                    res.error = f"tokens_evaluated {evaluated} != {res.n_prompt}"
