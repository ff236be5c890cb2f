"""prefixd: the Python client of the prefixd daemon (LLM generation with a shared prefix cache).

    import prefixd

    client = prefixd.Client("127.0.0.1:7878", key=None)
    reply = client.chat([{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "Capital of France?"}], max_tokens=16)
    print(reply.text, reply.usage.cached_tokens, reply.timings.ttft_ms)

:class:`Client` (sync) and :class:`AsyncClient` (asyncio) cover the ``prefixd.v1.Prefixd``
service; :class:`Admin` and :class:`AsyncAdmin` the ``prefixd.v1.Admin`` one. Failures raise
:class:`PrefixdError` subclasses (``Unauthenticated``, ``NotFound``, ``DeadlineExceeded``...).
The raw generated stubs are ``prefixd.v1.prefixd_pb2`` and ``prefixd.v1.prefixd_pb2_grpc``.
"""
from prefixd.aio import AsyncAdmin, AsyncClient, AsyncGenerateStream
from prefixd.client import Admin, Client, GenerateStream
from prefixd.errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                            FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                            PermissionDenied, PrefixdError, ResourceExhausted, Unauthenticated,
                            Unavailable, Unimplemented, Unknown)
from prefixd.types import (ChatCompletion, CreatedTenant, FinishReason, GenerateChunk,
                           HealthStatus, LookupResult, Message, Prefix, Stats, Tenant,
                           TenantLimits, TenantStats, Tier, TierCounts, TierStats, Timings,
                           TokenLogprob, Usage, WarmResult)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "Admin", "AsyncAdmin", "GenerateStream", "AsyncGenerateStream",
    "PrefixdError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "ChatCompletion", "CreatedTenant", "FinishReason", "GenerateChunk", "HealthStatus",
    "LookupResult", "Message", "Prefix", "Stats", "Tenant", "TenantLimits", "TenantStats",
    "Tier", "TierCounts", "TierStats", "Timings", "TokenLogprob", "Usage", "WarmResult", "__version__",
]
