"""Plain result types of the prefixd client: small frozen dataclasses built from the wire
messages, so callers never handle protobuf objects.

Enums are ``str`` subclasses, so ``chunk.finish_reason == "stop"`` works as well as
``chunk.finish_reason is FinishReason.STOP``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union


class _StrEnum(str, enum.Enum):
    """An enum whose members are their string values (``str(x)`` and f-strings included)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Tier(_StrEnum):
    """A cache tier. ``DEVICE`` is GPU memory (host memory on the CPU backend)."""

    DEVICE = "device"
    HOST = "host"
    DISK = "disk"

    @property
    def wire(self) -> int:
        """The ``prefixd.v1.Tier`` value."""
        return {"device": 1, "host": 2, "disk": 3}[self.value]

    @classmethod
    def from_wire(cls, value: int) -> Optional["Tier"]:
        return {1: cls.DEVICE, 2: cls.HOST, 3: cls.DISK}.get(int(value))


class FinishReason(_StrEnum):
    """Why a generation ended (set on the final chunk only)."""

    STOP = "stop"            # an end-of-generation token, a stop token or a stop string
    LENGTH = "length"        # max_tokens or the context limit
    CANCELLED = "cancelled"  # the client cancelled or the deadline passed
    ERROR = "error"

    @classmethod
    def from_wire(cls, value: int) -> Optional["FinishReason"]:
        return {1: cls.STOP, 2: cls.LENGTH, 3: cls.CANCELLED, 4: cls.ERROR}.get(int(value))


class HealthStatus(_StrEnum):
    """What ``health()`` reports."""

    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"  # starting, draining or failed

    @classmethod
    def from_wire(cls, value: int) -> "HealthStatus":
        return {1: cls.SERVING, 2: cls.NOT_SERVING}.get(int(value), cls.UNKNOWN)


@dataclass(frozen=True)
class Message:
    """One chat message; ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


MessageLike = Union[Message, Mapping[str, str], Tuple[str, str]]
"""A chat message as a :class:`Message`, a ``{"role": ..., "content": ...}`` dict (the OpenAI
shape) or a ``(role, content)`` pair."""

PromptLike = Union[str, Sequence[int], Sequence[MessageLike]]
"""A prompt: text, a list of token ids, or a list of chat messages."""


@dataclass(frozen=True)
class TierCounts:
    """Token or block counts per tier."""

    device: int = 0
    host: int = 0
    disk: int = 0

    @property
    def total(self) -> int:
        return self.device + self.host + self.disk

    @classmethod
    def from_pb(cls, m: Any) -> "TierCounts":
        if m is None:
            return cls()
        return cls(device=int(m.device), host=int(m.host), disk=int(m.disk))


@dataclass(frozen=True)
class Usage:
    """Token accounting of one generation."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the cache
    cached_tokens_by_tier: TierCounts = field(default_factory=TierCounts)
    generated_tokens: int = 0

    @property
    def computed_tokens(self) -> int:
        """Prompt tokens that had to be computed (not served from the cache)."""
        return self.prompt_tokens - self.cached_tokens

    @classmethod
    def from_pb(cls, m: Any) -> "Usage":
        return cls(prompt_tokens=m.prompt_tokens, cached_tokens=m.cached_tokens,
                   cached_tokens_by_tier=TierCounts.from_pb(m.cached_tokens_by_tier),
                   generated_tokens=m.generated_tokens)


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent in each phase of a generation."""

    queue_ms: float = 0.0    # waiting for admission
    restore_ms: float = 0.0  # bringing cached blocks back from colder tiers
    prefill_ms: float = 0.0  # computing the uncached prompt tokens
    ttft_ms: float = 0.0     # from arrival to the first generated token
    decode_ms: float = 0.0   # from the first to the last generated token

    @classmethod
    def from_pb(cls, m: Any) -> "Timings":
        return cls(queue_ms=m.queue_ms, restore_ms=m.restore_ms, prefill_ms=m.prefill_ms,
                   ttft_ms=m.ttft_ms, decode_ms=m.decode_ms)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (its raw logits' log-softmax, not
    the sampling distribution), and when asked for, the most probable tokens of that step as
    ``(token id, logprob)`` pairs, best first."""

    token_id: int
    logprob: float
    top: List[Tuple[int, float]] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: Any) -> "TokenLogprob":
        return cls(token_id=m.token_id, logprob=m.logprob,
                   top=list(zip(m.top_ids, m.top_logprobs)))


@dataclass(frozen=True)
class GenerateChunk:
    """One message of a generation stream: new text and token ids; the final chunk also carries
    ``finish_reason``, ``usage`` and ``timings``."""

    text: str = ""
    token_ids: List[int] = field(default_factory=list)
    finish_reason: Optional[FinishReason] = None
    usage: Optional[Usage] = None
    timings: Optional[Timings] = None
    logprobs: List[TokenLogprob] = field(default_factory=list)  # one per token id, if asked for

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_pb(cls, m: Any) -> "GenerateChunk":
        reason = FinishReason.from_wire(m.finish_reason) if m.finish_reason else None
        return cls(text=m.text, token_ids=list(m.token_ids), finish_reason=reason,
                   usage=Usage.from_pb(m.usage) if m.HasField("usage") else None,
                   timings=Timings.from_pb(m.timings) if m.HasField("timings") else None,
                   logprobs=[TokenLogprob.from_pb(x) for x in m.logprobs])


@dataclass(frozen=True)
class ChatCompletion:
    """The whole reply of :meth:`Client.chat`."""

    text: str
    token_ids: List[int]
    finish_reason: Optional[FinishReason]
    usage: Usage
    timings: Timings
    logprobs: List[TokenLogprob] = field(default_factory=list)  # one per token id, if asked for
    request_id: str = ""  # the daemon's id of the call (x-request-id): its access-log line

    @property
    def message(self) -> Message:
        """The reply as an assistant message, ready to append to the conversation."""
        return Message("assistant", self.text)


@dataclass(frozen=True)
class WarmResult:
    """What :meth:`Client.warm` did."""

    prompt_tokens: int
    cached_tokens: int    # already cached before the call
    computed_tokens: int  # computed by the call
    prefix_id: str        # 32 hex digits: the id of the prefix's last block (for pin/evict)

    @classmethod
    def from_pb(cls, m: Any) -> "WarmResult":
        return cls(prompt_tokens=m.prompt_tokens, cached_tokens=m.cached_tokens,
                   computed_tokens=m.computed_tokens, prefix_id=m.prefix_id)


@dataclass(frozen=True)
class LookupResult:
    """How much of a prompt is cached."""

    prompt_tokens: int
    cached_tokens: int
    cached_tokens_by_tier: TierCounts

    @classmethod
    def from_pb(cls, m: Any) -> "LookupResult":
        return cls(prompt_tokens=m.prompt_tokens, cached_tokens=m.cached_tokens,
                   cached_tokens_by_tier=TierCounts.from_pb(m.cached_tokens_by_tier))


@dataclass(frozen=True)
class Prefix:
    """A cached prefix, as :meth:`Client.prefixes` lists it."""

    id: str
    tenant: str
    namespace: str  # empty for the tenant's private namespace
    token_count: int
    blocks: TierCounts
    hits: int
    last_use_unix_ms: int
    pinned: bool
    pin_expires_unix_ms: int  # 0 = no expiry
    preview: str              # the first characters of the prefix's text
    parent_id: str = ""       # the nearest listed prefix whose blocks it continues; "" = none

    @classmethod
    def from_pb(cls, m: Any) -> "Prefix":
        return cls(id=m.id, tenant=m.tenant, namespace=m.namespace, token_count=m.token_count,
                   blocks=TierCounts.from_pb(m.blocks), hits=m.hits,
                   last_use_unix_ms=m.last_use_unix_ms, pinned=m.pinned,
                   pin_expires_unix_ms=m.pin_expires_unix_ms, preview=m.preview,
                   parent_id=m.parent_id)


@dataclass(frozen=True)
class TierStats:
    tier: Optional[Tier]
    blocks_used: int
    blocks_capacity: int
    bytes_used: int
    bytes_capacity: int
    disabled: bool
    disabled_reason: str

    @classmethod
    def from_pb(cls, m: Any) -> "TierStats":
        return cls(tier=Tier.from_wire(m.tier), blocks_used=m.blocks_used,
                   blocks_capacity=m.blocks_capacity, bytes_used=m.bytes_used,
                   bytes_capacity=m.bytes_capacity, disabled=m.disabled,
                   disabled_reason=m.disabled_reason)


@dataclass(frozen=True)
class TenantStats:
    tenant: str
    blocks: TierCounts
    requests: int
    hit_tokens: int
    query_tokens: int
    computed_tokens: int = 0  # uncached prompt + generated: what a tokens-per-minute limit counts
    rate_limited: int = 0     # requests refused by the tenant's rate limits

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    @classmethod
    def from_pb(cls, m: Any) -> "TenantStats":
        return cls(tenant=m.tenant, blocks=TierCounts.from_pb(m.blocks), requests=m.requests,
                   hit_tokens=m.hit_tokens, query_tokens=m.query_tokens,
                   computed_tokens=m.computed_tokens, rate_limited=m.rate_limited)


@dataclass(frozen=True)
class Stats:
    """The daemon's counters (tenants: all for the admin, otherwise only the caller)."""

    tiers: List[TierStats]
    tenants: List[TenantStats]
    kv_bytes_per_token: int
    hit_tokens: int
    query_tokens: int
    requests: int
    queue_depth: int
    tokens_per_second: float
    uptime_seconds: float
    model: str
    backend: str

    @property
    def hit_rate(self) -> float:
        """Prompt tokens served from the cache over prompt tokens asked for."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def tier(self, tier: Union[Tier, str]) -> Optional[TierStats]:
        """The stats of one tier, or None."""
        want = Tier(tier)
        return next((t for t in self.tiers if t.tier is want), None)

    @classmethod
    def from_pb(cls, m: Any) -> "Stats":
        return cls(tiers=[TierStats.from_pb(t) for t in m.tiers],
                   tenants=[TenantStats.from_pb(t) for t in m.tenants],
                   kv_bytes_per_token=m.kv_bytes_per_token, hit_tokens=m.hit_tokens,
                   query_tokens=m.query_tokens, requests=m.requests, queue_depth=m.queue_depth,
                   tokens_per_second=m.tokens_per_second, uptime_seconds=m.uptime_seconds,
                   model=m.model, backend=m.backend)


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits; 0 means unlimited. The per-minute ones are rate limits: tokens count
    what the daemon computes (prompt tokens not in the cache, and generated tokens)."""

    max_blocks: TierCounts = field(default_factory=TierCounts)
    max_concurrent_requests: int = 0
    max_context_tokens: int = 0
    max_tokens_per_minute: int = 0
    max_requests_per_minute: int = 0

    @classmethod
    def from_pb(cls, m: Any) -> "TenantLimits":
        if m is None:
            return cls()
        return cls(max_blocks=TierCounts.from_pb(m.max_blocks),
                   max_concurrent_requests=m.max_concurrent_requests,
                   max_context_tokens=m.max_context_tokens,
                   max_tokens_per_minute=m.max_tokens_per_minute,
                   max_requests_per_minute=m.max_requests_per_minute)


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: TenantLimits
    granted_namespaces: List[str]
    created_unix_ms: int

    @classmethod
    def from_pb(cls, m: Any) -> "Tenant":
        return cls(name=m.name, limits=TenantLimits.from_pb(m.limits),
                   granted_namespaces=list(m.granted_namespaces),
                   created_unix_ms=m.created_unix_ms)


@dataclass(frozen=True)
class CreatedTenant:
    """A new tenant and its API key; the key is shown only this once."""

    tenant: Tenant
    api_key: str


__all__ = [
    "Tier", "FinishReason", "HealthStatus", "Message", "MessageLike", "PromptLike", "TierCounts",
    "Usage", "Timings", "GenerateChunk", "ChatCompletion", "WarmResult", "LookupResult",
    "Prefix", "TierStats", "TenantStats", "Stats", "TenantLimits", "Tenant", "CreatedTenant",
]
