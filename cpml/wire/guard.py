"""Every gRPC method of a cpml daemon behind one guard (a server interceptor): bytes that are not the request
message get INVALID_ARGUMENT, and an exception no handler expected gets INTERNAL (MemoryError: RESOURCE_EXHAUSTED)
naming only its type and place, logged the same way. Exception texts are never sent or logged: one raised
deep inside numpy or protobuf could quote a share, a datum or a weight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from cpml.errors import CpmlError, failure_site
from cpml.wire.serde import MalformedMessage

log = structlog.get_logger(__name__)


class Undecodable:
    """Stands in for a request whose bytes did not parse, so the guard can refuse it with a status."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def status_of(exc: CpmlError) -> grpc.StatusCode:
    """The gRPC status a servicer answers a refused request with: the one its error category names."""
    return grpc.StatusCode[exc.status]


def guarded_server(options: list[tuple[str, Any]]) -> grpc.aio.Server:
    """A grpc.aio server whose every method, registered with the generated add_*_to_server, is behind the guard."""
    return grpc.aio.server(options=options, interceptors=[_Guard()])


class _Guard(grpc.aio.ServerInterceptor):
    """Wraps the handler gRPC found for each call: tolerant parsing, and no exception left unanswered."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        return None if handler is None else _guard(handler, details.method.lstrip("/"))


def _guard(method_handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    handler: Any = method_handler  # grpc's RpcMethodHandler namedtuple; its stubs know neither _replace nor aio
    parse = _tolerant(handler.request_deserializer)
    if handler.unary_unary is not None:
        return handler._replace(request_deserializer=parse, unary_unary=_unary(handler.unary_unary, method))
    if handler.unary_stream is not None:
        return handler._replace(request_deserializer=parse, unary_stream=_unary_stream(handler.unary_stream, method))
    if handler.stream_unary is not None:
        return handler._replace(request_deserializer=parse, stream_unary=_stream(handler.stream_unary, method))
    return handler._replace(request_deserializer=parse, stream_stream=_stream_stream(handler.stream_stream, method))


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Undecodable(
                f"the request is not a valid {name} message ({len(data)} bytes that do not parse as protobuf, or "
                f"a string field that is not UTF-8); client and server must speak the same cpml.v1 contract"
            )

    return parse


def _unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort_unexpected(context, method, exc)

    return handle


def _unary_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            async for reply in behavior(request, context):
                yield reply
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _abort_unexpected(context, method, exc)

    return handle


def _stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(_parsed(requests), context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except MalformedMessage as exc:  # an undecodable message the handler did not map itself
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            await _abort_unexpected(context, method, exc)

    return handle


def _stream_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for reply in behavior(_parsed(requests), context):
                yield reply
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            await _abort_unexpected(context, method, exc)

    return handle


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, raising MalformedMessage (which handlers map to INVALID_ARGUMENT) at bad bytes."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise MalformedMessage(request.message)
        yield request


async def _abort_unexpected(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    error, site = type(exc).__name__, failure_site(exc)
    task = asyncio.current_task()
    if context.cancelled() or (task is not None and task.cancelling()):  # the client went away mid-call: no bug
        log.debug("request ended by the client", method=method, error=error, site=site)
        raise asyncio.CancelledError  # the call is over: finish it as cancelled, as gRPC expects
    log.error("request failed unexpectedly", method=method, error=error, site=site)
    if isinstance(exc, MemoryError):
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{method} ran out of memory ({error} at {site}); the server keeps serving. Send a "
            f"smaller job or give the server more memory",
        )
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"{method} failed inside the server ({error} at {site}); the server keeps serving. This is "
        f"a bug: please report it with the server's log",
    )
