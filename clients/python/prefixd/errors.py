"""Typed exceptions for the gRPC status codes prefixd answers with.

Every failed call raises a subclass of :class:`PrefixdError` carrying the status ``code``
(a ``grpc.StatusCode``) and the server's ``message``. Catch the subclass you can handle::

    try:
        client.generate("hi", namespace="team")
    except prefixd.PermissionDenied as e:   # the namespace is not granted to this tenant
        print(e.code, e.message)

A code without a subclass of its own raises :class:`PrefixdError` itself.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class PrefixdError(Exception):
    """A call to prefixd failed. ``code`` is the gRPC status, ``message`` the server's words."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", code: Optional[grpc.StatusCode] = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = ""  # the daemon's id of a failed Generate or Warm (its access log)
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


class Cancelled(PrefixdError):
    """The call was cancelled (by this client, or by the server while it drained)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(PrefixdError):
    """The server or the transport failed without a more precise status."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(PrefixdError):
    """The request is malformed: an empty prompt, a token outside the vocabulary, a prompt over
    the context limit, a negative temperature, a bad prefix id or page token."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(PrefixdError):
    """The call's deadline (``timeout``) passed before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(PrefixdError):
    """No such prefix, tenant or namespace (another tenant's prefix is reported as missing)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PrefixdError):
    """A tenant of that name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(PrefixdError):
    """The key is valid but may not do this: an Admin RPC without the admin key, a namespace
    that was not granted, generation with the admin key."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(PrefixdError):
    """The queue is full, the KV cache cannot hold the request, or a message is too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PrefixdError):
    """The state does not allow it: unpinning a prefix that is not pinned, deleting a tenant
    with requests in flight."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(PrefixdError):
    """The operation was aborted."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(PrefixdError):
    """A value is out of range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(PrefixdError):
    """The server does not implement this RPC (an older daemon)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(PrefixdError):
    """The server failed (a forward pass, the tenant registry)."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(PrefixdError):
    """The daemon cannot be reached, or it is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(PrefixdError):
    """Unrecoverable data loss."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(PrefixdError):
    """No API key, or one the daemon does not know (rotated, deleted, mistyped)."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[PrefixdError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def error_class(code: grpc.StatusCode) -> Type[PrefixdError]:
    """The exception class for a status code (:class:`PrefixdError` for one without its own)."""
    return _BY_CODE.get(code, PrefixdError)


def from_rpc_error(err: grpc.RpcError) -> PrefixdError:
    """Converts a grpcio error (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) into the
    matching :class:`PrefixdError`; the original stays reachable as ``__cause__``."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    exc = error_class(code)(details or "", code)
    for name in ("trailing_metadata", "initial_metadata"):  # trailers-only answers: the former
        fn = getattr(err, name, None)
        try:
            md = fn() if callable(fn) else None
        except Exception:  # noqa: BLE001 -- a call object that cannot say: no id
            md = None
        for k, v in md or ():
            if k == "x-request-id" and not exc.request_id:
                exc.request_id = v
    exc.__cause__ = err
    return exc


__all__ = [
    "PrefixdError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "error_class", "from_rpc_error",
]
