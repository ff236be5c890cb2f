"""Building wire requests from Python arguments; shared by the sync and the asyncio client.

Nothing here talks to the network: each function turns friendly arguments (a string, a list of
token ids, OpenAI-style message dicts, a tier name) into the ``prefixd.v1`` protobuf messages.
"""
from __future__ import annotations

import json
import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from prefixd.types import (Message, MessageLike, Prefix, PromptLike, TenantLimits, Tier,
                           TierCounts, WarmResult)
from prefixd.v1 import prefixd_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:7878"
DEFAULT_TIMEOUT = 600.0

Metadata = Tuple[Tuple[str, str], ...]


def resolve_target(target: Optional[str]) -> str:
    """``None`` -> ``$PREFIXD_ADDR`` or 127.0.0.1:7878; a bare absolute path -> ``unix:PATH``."""
    if target is None:
        target = os.environ.get("PREFIXD_ADDR") or DEFAULT_TARGET
    if target.startswith("/"):
        return "unix:" + target
    return target


def resolve_key(key: Optional[str]) -> Optional[str]:
    """``None`` -> ``$PREFIXD_API_KEY`` (if set); an empty string means no key at all."""
    if key is None:
        key = os.environ.get("PREFIXD_API_KEY")
    return key or None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def resolve_tls(tls: Union[None, bool, str], target: str,
                client_cert: Optional[Tuple[str, str]] = None
                ) -> Optional[grpc.ChannelCredentials]:
    """The channel's TLS credentials, or None for plaintext. ``tls``: ``True`` (verify the
    daemon's certificate against the system's roots), a path to a PEM file of CA certificates
    to verify it against, or ``False``; ``None`` -> ``$PREFIXD_TLS_CA`` (that path) if set,
    else plaintext. ``client_cert``: (certificate chain, private key) PEM paths for a daemon
    that asks for one (``--tls-client-ca``); ``None`` -> ``$PREFIXD_TLS_CLIENT_CERT`` and
    ``$PREFIXD_TLS_CLIENT_KEY`` if set. A client certificate implies TLS. A Unix-socket target
    is always plaintext (the daemon serves TLS on TCP)."""
    if client_cert is None and os.environ.get("PREFIXD_TLS_CLIENT_CERT"):
        client_cert = (os.environ["PREFIXD_TLS_CLIENT_CERT"],
                       os.environ.get("PREFIXD_TLS_CLIENT_KEY", ""))
    if tls is None:
        tls = os.environ.get("PREFIXD_TLS_CA") or bool(client_cert)
    if tls is False:
        if client_cert:
            raise ValueError("a client certificate needs TLS (tls=False was given)")
        return None
    if target.startswith("unix:"):
        raise ValueError("TLS is for TCP targets: the daemon's Unix socket is plaintext")
    roots = None if tls is True else _read(tls)
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    cert, key = client_cert
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=_read(key),
                                        certificate_chain=_read(cert))


def call_metadata(key: Optional[str], extra: Sequence[Tuple[str, str]] = ()) -> Metadata:
    md = list(extra)
    if key:
        md.append(("authorization", f"Bearer {key}"))
    return tuple(md)


def _message(m: MessageLike) -> Any:
    if isinstance(m, Message):
        return pb.ChatMessage(role=m.role, content=m.content)
    if isinstance(m, Mapping) and "role" in m and "content" in m:
        return pb.ChatMessage(role=str(m["role"]), content=str(m["content"]))
    if isinstance(m, (tuple, list)) and len(m) == 2:
        return pb.ChatMessage(role=str(m[0]), content=str(m[1]))
    if hasattr(m, "role") and hasattr(m, "content"):
        return pb.ChatMessage(role=str(m.role), content=str(m.content))
    raise TypeError(f"a chat message must be a Message, a dict with role and content, or a "
                    f"(role, content) pair; got {m!r}")


def _is_token_ids(seq: Sequence[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in seq)


def prompt(value: Optional[PromptLike] = None, messages: Optional[Sequence[MessageLike]] = None,
           add_generation_prompt: bool = False) -> Any:
    """A ``prefixd.v1.Prompt`` from text, token ids or chat messages (exactly one)."""
    if (value is None) == (messages is None):
        raise TypeError("pass exactly one of a prompt (text, token ids or messages) or messages=")
    if isinstance(messages, str):
        raise TypeError("messages= takes a list of chat messages, not a string")
    source: Any = messages if messages is not None else value
    if isinstance(source, str):
        return pb.Prompt(text=source)
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("the prompt must be str, not bytes")
    seq: List[Any] = list(source)
    if messages is None and _is_token_ids(seq):
        return pb.Prompt(tokens=pb.TokenIds(ids=seq))
    return pb.Prompt(chat=pb.ChatMessages(messages=[_message(m) for m in seq],
                                          add_generation_prompt=add_generation_prompt))


def cache_options(namespace: str = "", no_cache: bool = False, pin_ttl: int = 0) -> Any:
    return pb.CacheOptions(namespace=namespace or "", no_cache=bool(no_cache),
                           pin_ttl_seconds=int(pin_ttl or 0))


def generate_request(value: Optional[PromptLike], messages: Optional[Sequence[MessageLike]], *,
                     max_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 0.0, min_p: float = 0.0, repeat_penalty: float = 0.0,
                     repeat_last_n: int = 0, seed: int = 0, ignore_eos: bool = False,
                     presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                     logit_bias: Optional[Mapping[int, float]] = None,
                     response_format: Union[str, Mapping[str, Any]] = "text",
                     stop: Union[str, Sequence[str], None] = None,
                     stop_tokens: Optional[Sequence[int]] = None, namespace: str = "",
                     no_cache: bool = False, pin_ttl: int = 0, logprobs: bool = False,
                     top_logprobs: int = 0) -> Any:
    if isinstance(stop, str):
        stop = [stop]
    sampling = pb.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                 seed=seed, ignore_eos=ignore_eos,
                                 presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty,
                                 logit_bias=[pb.LogitBias(token_id=int(t), bias=float(b))
                                             for t, b in (logit_bias or {}).items()])
    formats = {"text": pb.ResponseFormat.RESPONSE_FORMAT_TEXT,
               "json_object": pb.ResponseFormat.RESPONSE_FORMAT_JSON_OBJECT}
    if hasattr(response_format, "model_json_schema"):  # a pydantic model class: its schema
        response_format = response_format.model_json_schema()
    if isinstance(response_format, Mapping):  # a JSON schema
        fmt = pb.ResponseFormat(type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_SCHEMA,
                                json_schema=json.dumps(response_format))
    elif response_format in formats:
        fmt = pb.ResponseFormat(type=formats[response_format])
    else:
        raise ValueError("response_format must be 'text', 'json_object' or a JSON schema (a "
                         f"dict), not {response_format!r}")
    return pb.GenerateRequest(prompt=prompt(value, messages, add_generation_prompt=True),
                              sampling=sampling,
                              response_format=fmt,
                              max_tokens=max_tokens or 0,
                              stop=list(stop or ()), stop_tokens=list(stop_tokens or ()),
                              cache=cache_options(namespace, no_cache, pin_ttl),
                              logprobs=bool(logprobs), top_logprobs=int(top_logprobs or 0))


def tier(value: Union[Tier, str, None]) -> Any:
    """The wire value (an int of ``prefixd.v1.Tier``) of a tier; ``None`` = every tier."""
    if value is None:
        return pb.TIER_UNSPECIFIED
    return Tier(value).wire


def prefix_id(value: Union[str, Prefix, WarmResult]) -> str:
    """A prefix id from a string, a :class:`Prefix` or a :class:`WarmResult`."""
    if isinstance(value, Prefix):
        return value.id
    if isinstance(value, WarmResult):
        return value.prefix_id
    return str(value)


def evict_request(prefix: Union[str, Prefix, WarmResult, None], tenant: Optional[str],
                  everything: bool, which_tier: Union[Tier, str, None]) -> Any:
    given = sum(x for x in (prefix is not None, tenant is not None, bool(everything)))
    if given != 1:
        raise TypeError("evict needs exactly one of prefix_id, tenant= or all=True")
    req = pb.EvictRequest(tier=tier(which_tier))
    if prefix is not None:
        req.prefix_id = prefix_id(prefix)
    elif tenant is not None:
        req.tenant = tenant
    else:
        req.all = True
    return req


def _tier_counts(v: Union[TierCounts, Mapping[str, int], int, None]) -> Any:
    if v is None:
        return pb.TierCounts()
    if isinstance(v, int):
        return pb.TierCounts(device=v)
    if isinstance(v, Mapping):
        return pb.TierCounts(**{k: int(n) for k, n in v.items()})
    return pb.TierCounts(device=v.device, host=v.host, disk=v.disk)


def limits(value: Optional[TenantLimits] = None, *,
           max_blocks: Union[TierCounts, Mapping[str, int], int, None] = None,
           max_concurrent_requests: Optional[int] = None,
           max_context_tokens: Optional[int] = None,
           max_tokens_per_minute: Optional[int] = None,
           max_requests_per_minute: Optional[int] = None) -> Any:
    """A ``TenantLimits`` message from a :class:`TenantLimits` and/or keyword overrides.

    ``max_blocks`` may be a :class:`TierCounts`, a dict such as ``{"device": 512}``, or an int
    (device blocks).
    """
    base = value or TenantLimits()

    def given(v: Optional[int], default: int) -> int:
        return v if v is not None else default
    return pb.TenantLimits(
        max_blocks=_tier_counts(max_blocks if max_blocks is not None else base.max_blocks),
        max_concurrent_requests=given(max_concurrent_requests, base.max_concurrent_requests),
        max_context_tokens=given(max_context_tokens, base.max_context_tokens),
        max_tokens_per_minute=given(max_tokens_per_minute, base.max_tokens_per_minute),
        max_requests_per_minute=given(max_requests_per_minute, base.max_requests_per_minute))


def token_list(ids: Sequence[int]) -> List[int]:
    return [int(i) for i in ids]
