"""The asyncio prefixd client, over ``grpc.aio``: the methods of :class:`prefixd.Client`, as
coroutines (and async iterators for ``generate`` and ``prefixes``).

    import asyncio, prefixd

    async def main():
        async with prefixd.AsyncClient("127.0.0.1:7878") as client:
            async for chunk in client.generate("Once upon a time", max_tokens=32):
                print(chunk.text, end="")
            replies = await asyncio.gather(*(client.chat([{"role": "user", "content": q}])
                                             for q in ["Hi?", "Why?"]))

    asyncio.run(main())

The grpc channel is opened on first use, inside the running event loop, so a client may be
built before ``asyncio.run``; it belongs to that loop afterwards.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from prefixd import _requests as req
from prefixd.client import _USER_AGENT, StreamResult
from prefixd.errors import Cancelled, Unknown, from_rpc_error
from prefixd.types import (ChatCompletion, CreatedTenant, GenerateChunk, HealthStatus,
                           LookupResult, MessageLike, Prefix, PromptLike, Stats, Tenant,
                           TenantLimits, Tier, TierCounts, WarmResult)
from prefixd.v1 import prefixd_pb2 as pb
from prefixd.v1 import prefixd_pb2_grpc as pb_grpc


class _AsyncConnection:
    """A grpc.aio channel opened on first use (owned or borrowed), the key's metadata and the
    default deadline."""

    def __init__(self, target: Optional[str], key: Optional[str], timeout: Optional[float],
                 channel: Optional[grpc.aio.Channel], options: Sequence[Tuple[str, Any]],
                 metadata: Sequence[Tuple[str, str]], tls: Union[None, bool, str],
                 client_cert: Optional[Tuple[str, str]]) -> None:
        self.target = req.resolve_target(target)
        self._credentials = (None if channel is not None
                             else req.resolve_tls(tls, self.target, client_cert))
        self.key = req.resolve_key(key)
        self.timeout = timeout
        self.metadata = req.call_metadata(self.key, metadata)
        self._options = [_USER_AGENT, *options]
        self._owns_channel = channel is None
        self._channel: Optional[grpc.aio.Channel] = channel

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials,
                                                        options=self._options)
        return self._channel

    def deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    async def call(self, method: Any, request: Any, timeout: Optional[float]) -> Any:
        try:
            return await method(request, timeout=self.deadline(timeout), metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    async def close(self) -> None:
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None


class AsyncGenerateStream(StreamResult):
    """The chunks of one generation: ``async for chunk in stream``. Like
    :class:`prefixd.GenerateStream`: ``text``, ``token_ids`` and ``final`` hold what arrived,
    ``cancel()`` stops it, and ``async with`` cancels a stream left early."""

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self._cancelled = False

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            message = await self._call.read()
        except grpc.RpcError as e:
            self._ended = True
            raise from_rpc_error(e) from e
        except asyncio.CancelledError:
            if not self._cancelled:  # the task itself is being cancelled: let it go
                raise
            self._ended = True
            raise Cancelled("cancelled by the client") from None
        if message is grpc.aio.EOF:
            self._ended = True
            if self.final is None:
                raise Unknown("the stream ended without a final message")
            raise StopAsyncIteration
        if not self.request_id:
            self._keep_request_id(await self._call.initial_metadata())
        return self._take(message)

    def cancel(self) -> None:
        """Cancels the call; reading further raises :class:`prefixd.Cancelled`."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self._ended:
            self.cancel()

    async def collect(self) -> ChatCompletion:
        """Reads the rest of the stream; returns the whole reply."""
        async for _ in self:
            pass
        return self._completion()


class AsyncClient:
    """The asyncio twin of :class:`prefixd.Client`; same arguments, same methods."""

    def __init__(self, target: Optional[str] = None, key: Optional[str] = None,
                 timeout: Optional[float] = req.DEFAULT_TIMEOUT, *,
                 channel: Optional[grpc.aio.Channel] = None,
                 options: Sequence[Tuple[str, Any]] = (),
                 metadata: Sequence[Tuple[str, str]] = (),
                 tls: Union[None, bool, str] = None,
                 tls_client_cert: Optional[Tuple[str, str]] = None) -> None:
        self._conn = _AsyncConnection(target, key, timeout, channel, options, metadata,
                                    tls, tls_client_cert)
        self._stub_obj: Optional[pb_grpc.PrefixdStub] = None

    @property
    def _stub(self) -> pb_grpc.PrefixdStub:
        if self._stub_obj is None:
            self._stub_obj = pb_grpc.PrefixdStub(self._conn.channel)
        return self._stub_obj

    @property
    def target(self) -> str:
        return self._conn.target

    @property
    def admin(self) -> "AsyncAdmin":
        """The Admin service over this client's channel and key (which must be the admin key)."""
        return AsyncAdmin(channel=self._conn.channel, key=self._conn.key or "",
                          timeout=self._conn.timeout)

    async def close(self) -> None:
        self._stub_obj = None
        await self._conn.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- generation ---------------------------------------------------------------------------

    def generate(self, prompt: Optional[PromptLike] = None, *,
                 messages: Optional[Sequence[MessageLike]] = None, max_tokens: int = 0,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0,
                 min_p: float = 0.0, repeat_penalty: float = 0.0, repeat_last_n: int = 0,
                 seed: int = 0, ignore_eos: bool = False,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: Optional[Mapping[int, float]] = None, response_format: Union[str, Mapping[str, Any]] = "text",
                 stop: Union[str, Sequence[str], None] = None,
                 stop_tokens: Optional[Sequence[int]] = None, namespace: str = "",
                 no_cache: bool = False, pin_ttl: int = 0, logprobs: bool = False,
                 top_logprobs: int = 0, timeout: Optional[float] = None) -> AsyncGenerateStream:
        """Streams a generation: ``async for chunk in client.generate(...)``. Call it inside
        the event loop. Arguments as in :meth:`prefixd.Client.generate`."""
        request = req.generate_request(
            prompt, messages, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            seed=seed, ignore_eos=ignore_eos, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            response_format=response_format, stop=stop,
            stop_tokens=stop_tokens,
            namespace=namespace, no_cache=no_cache, pin_ttl=pin_ttl, logprobs=logprobs,
            top_logprobs=top_logprobs)
        call = self._stub.Generate(request, timeout=self._conn.deadline(timeout),
                                   metadata=self._conn.metadata)
        return AsyncGenerateStream(call)

    async def chat(self, messages: Sequence[MessageLike], *, max_tokens: int = 0,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0,
                   min_p: float = 0.0, repeat_penalty: float = 0.0, repeat_last_n: int = 0,
                   seed: int = 0, ignore_eos: bool = False,
                   presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                   logit_bias: Optional[Mapping[int, float]] = None, response_format: Union[str, Mapping[str, Any]] = "text",
                   stop: Union[str, Sequence[str], None] = None,
                   stop_tokens: Optional[Sequence[int]] = None, namespace: str = "",
                   no_cache: bool = False, pin_ttl: int = 0, logprobs: bool = False,
                   top_logprobs: int = 0, timeout: Optional[float] = None) -> ChatCompletion:
        """The assistant's whole reply to ``messages``, with usage and timings."""
        return await self.generate(
            messages=messages, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            seed=seed, ignore_eos=ignore_eos, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            response_format=response_format, stop=stop,
            stop_tokens=stop_tokens,
            namespace=namespace, no_cache=no_cache, pin_ttl=pin_ttl, logprobs=logprobs,
            top_logprobs=top_logprobs, timeout=timeout).collect()

    # ---- tokens -------------------------------------------------------------------------------

    async def tokenize(self, prompt: Optional[PromptLike] = None, *,
                       messages: Optional[Sequence[MessageLike]] = None,
                       add_generation_prompt: bool = False,
                       timeout: Optional[float] = None) -> List[int]:
        r = await self._conn.call(self._stub.Tokenize, pb.TokenizeRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt)), timeout)
        return list(r.token_ids)

    async def detokenize(self, token_ids: Sequence[int], *, render_special: bool = False,
                         timeout: Optional[float] = None) -> str:
        r = await self._conn.call(self._stub.Detokenize, pb.DetokenizeRequest(
            token_ids=req.token_list(token_ids), render_special=render_special), timeout)
        return str(r.text)

    # ---- the cache ----------------------------------------------------------------------------

    async def warm(self, prompt: Optional[PromptLike] = None, *,
                   messages: Optional[Sequence[MessageLike]] = None, namespace: str = "",
                   pin_ttl: int = 0, add_generation_prompt: bool = False,
                   timeout: Optional[float] = None) -> WarmResult:
        r = await self._conn.call(self._stub.Warm, pb.WarmRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt),
            cache=req.cache_options(namespace, False, pin_ttl)), timeout)
        return WarmResult.from_pb(r)

    async def lookup(self, prompt: Optional[PromptLike] = None, *,
                     messages: Optional[Sequence[MessageLike]] = None, namespace: str = "",
                     add_generation_prompt: bool = False,
                     timeout: Optional[float] = None) -> LookupResult:
        r = await self._conn.call(self._stub.Lookup, pb.LookupRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt),
            namespace=namespace or ""), timeout)
        return LookupResult.from_pb(r)

    async def prefixes(self, *, page_size: int = 100, tenant: str = "",
                       timeout: Optional[float] = None) -> AsyncIterator[Prefix]:
        """``async for prefix in client.prefixes()``: every cached prefix, page by page."""
        token = ""
        while True:
            r = await self._conn.call(self._stub.ListPrefixes, pb.ListPrefixesRequest(
                page_size=page_size, page_token=token, tenant=tenant or ""), timeout)
            for p in r.prefixes:
                yield Prefix.from_pb(p)
            token = r.next_page_token
            if not token:
                return

    async def evict(self, prefix_id: Union[str, Prefix, WarmResult, None] = None, *,
                    tenant: Optional[str] = None, all: bool = False,
                    tier: Union[Tier, str, None] = None,
                    timeout: Optional[float] = None) -> TierCounts:
        r = await self._conn.call(self._stub.Evict,
                                  req.evict_request(prefix_id, tenant, all, tier), timeout)
        return TierCounts.from_pb(r.blocks_evicted)

    async def pin(self, prefix_id: Union[str, Prefix, WarmResult], ttl: int = 0, *,
                  timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.Pin, pb.PinRequest(
            prefix_id=req.prefix_id(prefix_id), ttl_seconds=int(ttl)), timeout)

    async def unpin(self, prefix_id: Union[str, Prefix, WarmResult], *,
                    timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.Unpin,
                              pb.UnpinRequest(prefix_id=req.prefix_id(prefix_id)), timeout)

    # ---- the daemon ---------------------------------------------------------------------------

    async def stats(self, *, timeout: Optional[float] = None) -> Stats:
        return Stats.from_pb(await self._conn.call(self._stub.Stats, pb.StatsRequest(), timeout))

    async def health(self, *, timeout: Optional[float] = None) -> HealthStatus:
        r = await self._conn.call(self._stub.Health, pb.HealthRequest(), timeout)
        return HealthStatus.from_wire(r.status)


class AsyncAdmin:
    """The asyncio twin of :class:`prefixd.Admin`."""

    def __init__(self, target: Optional[str] = None, key: Optional[str] = None,
                 timeout: Optional[float] = req.DEFAULT_TIMEOUT, *,
                 channel: Optional[grpc.aio.Channel] = None,
                 options: Sequence[Tuple[str, Any]] = (),
                 metadata: Sequence[Tuple[str, str]] = (),
                 tls: Union[None, bool, str] = None,
                 tls_client_cert: Optional[Tuple[str, str]] = None) -> None:
        self._conn = _AsyncConnection(target, key, timeout, channel, options, metadata,
                                    tls, tls_client_cert)
        self._stub_obj: Optional[pb_grpc.AdminStub] = None

    @property
    def _stub(self) -> pb_grpc.AdminStub:
        if self._stub_obj is None:
            self._stub_obj = pb_grpc.AdminStub(self._conn.channel)
        return self._stub_obj

    async def close(self) -> None:
        self._stub_obj = None
        await self._conn.close()

    async def __aenter__(self) -> "AsyncAdmin":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def create_tenant(self, name: str, limits: Optional[TenantLimits] = None, *,
                            max_blocks: Union[TierCounts, dict, int, None] = None,
                            max_concurrent_requests: Optional[int] = None,
                            max_context_tokens: Optional[int] = None,
                            max_tokens_per_minute: Optional[int] = None,
                            max_requests_per_minute: Optional[int] = None,
                            timeout: Optional[float] = None) -> CreatedTenant:
        r = await self._conn.call(self._stub.CreateTenant, pb.CreateTenantRequest(
            name=name, limits=req.limits(limits, max_blocks=max_blocks,
                                         max_concurrent_requests=max_concurrent_requests,
                                         max_context_tokens=max_context_tokens,
                                         max_tokens_per_minute=max_tokens_per_minute,
                                         max_requests_per_minute=max_requests_per_minute)), timeout)
        return CreatedTenant(tenant=Tenant.from_pb(r.tenant), api_key=r.api_key)

    async def list_tenants(self, *, timeout: Optional[float] = None) -> List[Tenant]:
        r = await self._conn.call(self._stub.ListTenants, pb.ListTenantsRequest(), timeout)
        return [Tenant.from_pb(t) for t in r.tenants]

    async def delete_tenant(self, name: str, *, timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.DeleteTenant, pb.DeleteTenantRequest(name=name),
                              timeout)

    async def set_limits(self, name: str, limits: Optional[TenantLimits] = None, *,
                         max_blocks: Union[TierCounts, dict, int, None] = None,
                         max_concurrent_requests: Optional[int] = None,
                         max_context_tokens: Optional[int] = None,
                         max_tokens_per_minute: Optional[int] = None,
                         max_requests_per_minute: Optional[int] = None,
                         timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.SetLimits, pb.SetLimitsRequest(
            name=name, limits=req.limits(limits, max_blocks=max_blocks,
                                         max_concurrent_requests=max_concurrent_requests,
                                         max_context_tokens=max_context_tokens,
                                         max_tokens_per_minute=max_tokens_per_minute,
                                         max_requests_per_minute=max_requests_per_minute)), timeout)

    async def rotate_key(self, name: str, *, timeout: Optional[float] = None) -> str:
        r = await self._conn.call(self._stub.RotateKey, pb.RotateKeyRequest(name=name), timeout)
        return str(r.api_key)

    async def grant_namespace(self, tenant: str, namespace: str, *,
                              timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.GrantNamespace, pb.GrantNamespaceRequest(
            tenant=tenant, namespace=namespace), timeout)

    async def revoke_namespace(self, tenant: str, namespace: str, *,
                               timeout: Optional[float] = None) -> None:
        await self._conn.call(self._stub.RevokeNamespace, pb.RevokeNamespaceRequest(
            tenant=tenant, namespace=namespace), timeout)


__all__ = ["AsyncClient", "AsyncAdmin", "AsyncGenerateStream"]
