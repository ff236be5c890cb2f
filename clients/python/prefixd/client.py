"""The synchronous prefixd client, over grpcio.

    import prefixd

    client = prefixd.Client("127.0.0.1:7878", key="pfx-...")
    for chunk in client.generate("Once upon a time", max_tokens=32):
        print(chunk.text, end="")
    print(chunk.usage)          # the final chunk: finish_reason, usage, timings

    reply = client.chat([{"role": "system", "content": "Be terse."},
                         {"role": "user", "content": "Capital of France?"}])
    print(reply.text, reply.usage.cached_tokens, reply.timings.ttft_ms)

Every method raises a :class:`prefixd.PrefixdError` subclass on failure. ``timeout`` (seconds)
is the deadline of each call: the client's default, or the one given to the method.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from prefixd import _requests as req
from prefixd.errors import Unknown, from_rpc_error
from prefixd.types import (ChatCompletion, CreatedTenant, FinishReason, GenerateChunk,
                           HealthStatus, LookupResult, MessageLike, Prefix, PromptLike, Stats,
                           Tenant, TenantLimits, Tier, TierCounts, Timings, TokenLogprob, Usage,
                           WarmResult)
from prefixd.v1 import prefixd_pb2 as pb
from prefixd.v1 import prefixd_pb2_grpc as pb_grpc

_USER_AGENT = ("grpc.primary_user_agent", "prefixd-python")


class _Connection:
    """A channel (owned or borrowed), the API key's metadata and the default deadline."""

    def __init__(self, target: Optional[str], key: Optional[str], timeout: Optional[float],
                 channel: Optional[grpc.Channel], options: Sequence[Tuple[str, Any]],
                 metadata: Sequence[Tuple[str, str]], tls: Union[None, bool, str],
                 client_cert: Optional[Tuple[str, str]]) -> None:
        self.target = req.resolve_target(target)
        self._credentials = (None if channel is not None
                             else req.resolve_tls(tls, self.target, client_cert))
        self.key = req.resolve_key(key)
        self.timeout = timeout
        self.metadata = req.call_metadata(self.key, metadata)
        self._owns_channel = channel is None
        opts = [_USER_AGENT, *options]
        self.channel: grpc.Channel = channel or (
            grpc.insecure_channel(self.target, options=opts) if self._credentials is None
            else grpc.secure_channel(self.target, self._credentials, options=opts))

    def deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def call(self, method: Callable[..., Any], request: Any, timeout: Optional[float]) -> Any:
        try:
            return method(request, timeout=self.deadline(timeout), metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()


class StreamResult:
    """What a Generate stream has received so far: its text and token ids, and once the final
    message came, why it ended, the usage and the timings (None before). Shared by
    :class:`GenerateStream` and :class:`prefixd.aio.AsyncGenerateStream`."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._texts: List[str] = []
        self._ids: List[int] = []
        self._logprobs: List[TokenLogprob] = []
        self._ended = False
        self.final: Optional[GenerateChunk] = None
        # the daemon's id of this call (x-request-id; its access-log line), once headers came
        self.request_id = ""

    def _keep_request_id(self, metadata: Any) -> None:
        for k, v in metadata or ():
            if k == "x-request-id":
                self.request_id = v

    def _take(self, message: Any) -> GenerateChunk:
        """One message of the stream, kept and returned as a chunk."""
        chunk = GenerateChunk.from_pb(message)
        self._texts.append(chunk.text)
        self._ids.extend(chunk.token_ids)
        self._logprobs.extend(chunk.logprobs)
        if chunk.is_final:
            self.final = chunk
        return chunk

    def _completion(self) -> ChatCompletion:
        """The whole reply, once the stream has been read to its end."""
        return completion_of(self.text, self._ids, self.final, self._logprobs, self.request_id)

    @property
    def text(self) -> str:
        return "".join(self._texts)

    @property
    def token_ids(self) -> List[int]:
        return list(self._ids)

    @property
    def logprobs(self) -> List[TokenLogprob]:
        """One per token id, when the request asked for logprobs (else empty)."""
        return list(self._logprobs)

    @property
    def finish_reason(self) -> Optional[FinishReason]:
        return self.final.finish_reason if self.final else None

    @property
    def usage(self) -> Optional[Usage]:
        return self.final.usage if self.final else None

    @property
    def timings(self) -> Optional[Timings]:
        return self.final.timings if self.final else None


class GenerateStream(StreamResult, Iterator[GenerateChunk]):
    """The chunks of one generation, as they arrive.

    Iterate it to get :class:`GenerateChunk` objects; the last one has ``finish_reason``,
    ``usage`` and ``timings``. While or after iterating, ``text``, ``token_ids`` and ``final``
    hold what arrived so far. ``cancel()`` stops the generation on the server (the work already
    done stays cached); leaving a ``with`` block early does the same.
    """

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> GenerateChunk:
        if self._ended:
            raise StopIteration
        try:
            message = next(self._call)
        except StopIteration:
            self._ended = True
            if self.final is None:
                raise Unknown("the stream ended without a final message") from None
            raise
        except grpc.RpcError as e:
            self._ended = True
            raise from_rpc_error(e) from e
        if not self.request_id:
            self._keep_request_id(self._call.initial_metadata())
        return self._take(message)

    def cancel(self) -> None:
        """Cancels the call; iterating further raises :class:`prefixd.Cancelled`."""
        self._call.cancel()

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._ended:
            self.cancel()

    def collect(self) -> ChatCompletion:
        """Reads the rest of the stream; returns the whole reply."""
        for _ in self:
            pass
        return self._completion()


def completion_of(text: str, ids: List[int], final: Optional[GenerateChunk],
                  logprobs: Sequence[TokenLogprob] = (), request_id: str = "") -> ChatCompletion:
    if final is None:
        raise Unknown("the stream ended without a final message")
    return ChatCompletion(text=text, token_ids=list(ids), finish_reason=final.finish_reason,
                          usage=final.usage or Usage(), timings=final.timings or Timings(),
                          logprobs=list(logprobs), request_id=request_id)


class Client:
    """A connection to prefixd's ``Prefixd`` service.

    ``target``: ``host:port``, ``unix:/path/to.sock`` (or just the absolute path); default
    ``$PREFIXD_ADDR`` or 127.0.0.1:7878. ``key``: the tenant's API key, sent as
    ``authorization: Bearer <key>``; default ``$PREFIXD_API_KEY``; none for a single-tenant
    daemon. ``timeout``: the default deadline of every call in seconds (None = no deadline).
    ``channel``: use this grpc channel instead of opening one (it is then not closed by
    :meth:`close`). ``options`` go to grpc's channel; ``metadata`` is sent with every call.
    ``tls``: talk to a daemon started with ``--tls-cert``: ``True`` verifies its certificate
    against the system's roots, a path against the CA certificates in that PEM file; default
    ``$PREFIXD_TLS_CA`` (a path) if set, else plaintext. ``tls_client_cert``: (certificate
    chain, key) PEM paths, for a daemon started with ``--tls-client-ca``; default
    ``$PREFIXD_TLS_CLIENT_CERT`` and ``$PREFIXD_TLS_CLIENT_KEY``.
    """

    def __init__(self, target: Optional[str] = None, key: Optional[str] = None,
                 timeout: Optional[float] = req.DEFAULT_TIMEOUT, *,
                 channel: Optional[grpc.Channel] = None,
                 options: Sequence[Tuple[str, Any]] = (),
                 metadata: Sequence[Tuple[str, str]] = (),
                 tls: Union[None, bool, str] = None,
                 tls_client_cert: Optional[Tuple[str, str]] = None) -> None:
        self._conn = _Connection(target, key, timeout, channel, options, metadata,
                                    tls, tls_client_cert)
        self._stub = pb_grpc.PrefixdStub(self._conn.channel)

    @property
    def target(self) -> str:
        return self._conn.target

    @property
    def admin(self) -> "Admin":
        """The Admin service over this client's channel and key (which must be the admin key)."""
        return Admin(channel=self._conn.channel, key=self._conn.key or "",
                     timeout=self._conn.timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
                 top_logprobs: int = 0, timeout: Optional[float] = None) -> GenerateStream:
        """Streams a generation.

        ``prompt``: text (special tokens such as ``<|im_start|>`` are recognised), a list of
        token ids, or a list of chat messages (rendered with the model's chat template, ending
        with the assistant's turn); or pass the messages as ``messages=``. ``max_tokens`` 0 =
        up to the context limit. ``temperature`` 0 = greedy; ``top_k``/``top_p``/``min_p``/
        ``repeat_penalty`` 0 = off; same ``seed``, same tokens. ``presence_penalty`` and
        ``frequency_penalty`` (-2 to 2) are OpenAI's, over the generated tokens; ``logit_bias``
        maps token ids to a bias (-100 to 100) added to their logits. ``response_format``
        ``"json_object"`` keeps the output one JSON object, ending at its closing brace; a dict
        is a JSON schema the output follows (structured output), and so is a pydantic model
        class (its ``model_json_schema()``). ``stop``: strings that end the
        generation (not included). ``namespace``: a shared namespace granted to this tenant
        (default: its private one); ``no_cache``: neither read nor write the cache;
        ``pin_ttl``: pin the prompt's blocks for that many seconds.
        """
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
        return GenerateStream(call)

    def chat(self, messages: Sequence[MessageLike], *, max_tokens: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0, min_p: float = 0.0,
             repeat_penalty: float = 0.0, repeat_last_n: int = 0, seed: int = 0,
             ignore_eos: bool = False, presence_penalty: float = 0.0,
             frequency_penalty: float = 0.0, logit_bias: Optional[Mapping[int, float]] = None,
             response_format: Union[str, Mapping[str, Any]] = "text",
             stop: Union[str, Sequence[str], None] = None,
             stop_tokens: Optional[Sequence[int]] = None, namespace: str = "",
             no_cache: bool = False, pin_ttl: int = 0, logprobs: bool = False,
             top_logprobs: int = 0, timeout: Optional[float] = None) -> ChatCompletion:
        """Generates the assistant's reply to ``messages``; returns it whole, with usage and
        timings. The arguments are those of :meth:`generate`."""
        return self.generate(
            messages=messages, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            seed=seed, ignore_eos=ignore_eos, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            response_format=response_format, stop=stop,
            stop_tokens=stop_tokens,
            namespace=namespace, no_cache=no_cache, pin_ttl=pin_ttl, logprobs=logprobs,
            top_logprobs=top_logprobs, timeout=timeout).collect()

    # ---- tokens -------------------------------------------------------------------------------

    def tokenize(self, prompt: Optional[PromptLike] = None, *,
                 messages: Optional[Sequence[MessageLike]] = None,
                 add_generation_prompt: bool = False,
                 timeout: Optional[float] = None) -> List[int]:
        """The token ids of text or chat messages (chat: ``add_generation_prompt`` opens the
        assistant's turn at the end, as :meth:`generate` does)."""
        r = self._conn.call(self._stub.Tokenize, pb.TokenizeRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt)), timeout)
        return list(r.token_ids)

    def detokenize(self, token_ids: Sequence[int], *, render_special: bool = False,
                   timeout: Optional[float] = None) -> str:
        """The text of token ids (``render_special``: include special tokens' text)."""
        r = self._conn.call(self._stub.Detokenize, pb.DetokenizeRequest(
            token_ids=req.token_list(token_ids), render_special=render_special), timeout)
        return str(r.text)

    # ---- the cache ----------------------------------------------------------------------------

    def warm(self, prompt: Optional[PromptLike] = None, *,
             messages: Optional[Sequence[MessageLike]] = None, namespace: str = "",
             pin_ttl: int = 0, add_generation_prompt: bool = False,
             timeout: Optional[float] = None) -> WarmResult:
        """Prefills and caches a prompt without generating; ``pin_ttl`` pins it (seconds)."""
        r = self._conn.call(self._stub.Warm, pb.WarmRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt),
            cache=req.cache_options(namespace, False, pin_ttl)), timeout)
        return WarmResult.from_pb(r)

    def lookup(self, prompt: Optional[PromptLike] = None, *,
               messages: Optional[Sequence[MessageLike]] = None, namespace: str = "",
               add_generation_prompt: bool = False,
               timeout: Optional[float] = None) -> LookupResult:
        """How many of a prompt's tokens are cached, computing nothing."""
        r = self._conn.call(self._stub.Lookup, pb.LookupRequest(
            prompt=req.prompt(prompt, messages, add_generation_prompt),
            namespace=namespace or ""), timeout)
        return LookupResult.from_pb(r)

    def prefixes(self, *, page_size: int = 100, tenant: str = "",
                 timeout: Optional[float] = None) -> Iterator[Prefix]:
        """Iterates over the cached prefixes, fetching ``page_size`` per call (at most 1000).
        ``tenant``: admin only, that tenant's prefixes (the admin sees all by default)."""
        token = ""
        while True:
            r = self._conn.call(self._stub.ListPrefixes, pb.ListPrefixesRequest(
                page_size=page_size, page_token=token, tenant=tenant or ""), timeout)
            for p in r.prefixes:
                yield Prefix.from_pb(p)
            token = r.next_page_token
            if not token:
                return

    def evict(self, prefix_id: Union[str, Prefix, WarmResult, None] = None, *,
              tenant: Optional[str] = None, all: bool = False,
              tier: Union[Tier, str, None] = None,
              timeout: Optional[float] = None) -> TierCounts:
        """Evicts one prefix (and what hangs below it), a tenant's prefixes (admin), or all the
        caller's prefixes (``all=True``; the admin's: everything), from ``tier`` or every tier.
        Returns the blocks evicted per tier."""
        r = self._conn.call(self._stub.Evict, req.evict_request(prefix_id, tenant, all, tier),
                            timeout)
        return TierCounts.from_pb(r.blocks_evicted)

    def pin(self, prefix_id: Union[str, Prefix, WarmResult], ttl: int = 0, *,
            timeout: Optional[float] = None) -> None:
        """Pins a prefix against eviction for ``ttl`` seconds (0 = until unpinned)."""
        self._conn.call(self._stub.Pin, pb.PinRequest(
            prefix_id=req.prefix_id(prefix_id), ttl_seconds=int(ttl)), timeout)

    def unpin(self, prefix_id: Union[str, Prefix, WarmResult], *,
              timeout: Optional[float] = None) -> None:
        """Removes a pin; :class:`prefixd.FailedPrecondition` if the prefix is not pinned."""
        self._conn.call(self._stub.Unpin, pb.UnpinRequest(prefix_id=req.prefix_id(prefix_id)),
                        timeout)

    # ---- the daemon ---------------------------------------------------------------------------

    def stats(self, *, timeout: Optional[float] = None) -> Stats:
        return Stats.from_pb(self._conn.call(self._stub.Stats, pb.StatsRequest(), timeout))

    def health(self, *, timeout: Optional[float] = None) -> HealthStatus:
        r = self._conn.call(self._stub.Health, pb.HealthRequest(), timeout)
        return HealthStatus.from_wire(r.status)


class Admin:
    """The ``Admin`` service: tenants, their limits, keys and shared namespaces. Needs the admin
    key. Build it like a :class:`Client`, or take ``client.admin``."""

    def __init__(self, target: Optional[str] = None, key: Optional[str] = None,
                 timeout: Optional[float] = req.DEFAULT_TIMEOUT, *,
                 channel: Optional[grpc.Channel] = None,
                 options: Sequence[Tuple[str, Any]] = (),
                 metadata: Sequence[Tuple[str, str]] = (),
                 tls: Union[None, bool, str] = None,
                 tls_client_cert: Optional[Tuple[str, str]] = None) -> None:
        self._conn = _Connection(target, key, timeout, channel, options, metadata,
                                    tls, tls_client_cert)
        self._stub = pb_grpc.AdminStub(self._conn.channel)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def create_tenant(self, name: str, limits: Optional[TenantLimits] = None, *,
                      max_blocks: Union[TierCounts, dict, int, None] = None,
                      max_concurrent_requests: Optional[int] = None,
                      max_context_tokens: Optional[int] = None,
                      max_tokens_per_minute: Optional[int] = None,
                      max_requests_per_minute: Optional[int] = None,
                      timeout: Optional[float] = None) -> CreatedTenant:
        """Creates a tenant; the returned ``api_key`` is shown only this once."""
        r = self._conn.call(self._stub.CreateTenant, pb.CreateTenantRequest(
            name=name, limits=req.limits(limits, max_blocks=max_blocks,
                                         max_concurrent_requests=max_concurrent_requests,
                                         max_context_tokens=max_context_tokens,
                                         max_tokens_per_minute=max_tokens_per_minute,
                                         max_requests_per_minute=max_requests_per_minute)), timeout)
        return CreatedTenant(tenant=Tenant.from_pb(r.tenant), api_key=r.api_key)

    def list_tenants(self, *, timeout: Optional[float] = None) -> List[Tenant]:
        r = self._conn.call(self._stub.ListTenants, pb.ListTenantsRequest(), timeout)
        return [Tenant.from_pb(t) for t in r.tenants]

    def delete_tenant(self, name: str, *, timeout: Optional[float] = None) -> None:
        """Deletes a tenant and evicts its cached blocks; its key stops working."""
        self._conn.call(self._stub.DeleteTenant, pb.DeleteTenantRequest(name=name), timeout)

    def set_limits(self, name: str, limits: Optional[TenantLimits] = None, *,
                   max_blocks: Union[TierCounts, dict, int, None] = None,
                   max_concurrent_requests: Optional[int] = None,
                   max_context_tokens: Optional[int] = None,
                   max_tokens_per_minute: Optional[int] = None,
                   max_requests_per_minute: Optional[int] = None,
                   timeout: Optional[float] = None) -> None:
        """Replaces a tenant's limits (fields not given are 0: unlimited)."""
        self._conn.call(self._stub.SetLimits, pb.SetLimitsRequest(
            name=name, limits=req.limits(limits, max_blocks=max_blocks,
                                         max_concurrent_requests=max_concurrent_requests,
                                         max_context_tokens=max_context_tokens,
                                         max_tokens_per_minute=max_tokens_per_minute,
                                         max_requests_per_minute=max_requests_per_minute)), timeout)

    def rotate_key(self, name: str, *, timeout: Optional[float] = None) -> str:
        """Gives the tenant a new API key; the old one stops working at once."""
        r = self._conn.call(self._stub.RotateKey, pb.RotateKeyRequest(name=name), timeout)
        return str(r.api_key)

    def grant_namespace(self, tenant: str, namespace: str, *,
                        timeout: Optional[float] = None) -> None:
        """Lets a tenant use a shared namespace (created on its first grant)."""
        self._conn.call(self._stub.GrantNamespace, pb.GrantNamespaceRequest(
            tenant=tenant, namespace=namespace), timeout)

    def revoke_namespace(self, tenant: str, namespace: str, *,
                         timeout: Optional[float] = None) -> None:
        self._conn.call(self._stub.RevokeNamespace, pb.RevokeNamespaceRequest(
            tenant=tenant, namespace=namespace), timeout)


__all__ = ["Client", "Admin", "GenerateStream"]
