"""Typed errors of the control plane and their one mapping to gRPC status codes.

Domain code (controller and media daemon) raises these; `StatusInterceptor` turns them into
canonical status codes at the edge of each server, so servicers never pick codes themselves.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import grpc

log = logging.getLogger("charter.errors")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class CharterError(Exception):
    """A request that cannot be served, with a message that says what to fix."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(CharterError, ValueError):
    """A ValueError too, so that pure helpers (SDP, suites) can be used outside gRPC."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    @staticmethod
    @contextlib.contextmanager
    def within(field: str) -> Iterator[None]:
        """Name the fields of what fails inside as parts of `field` ("tracks[0]" + "ssrc")."""
        try:
            yield
        except InvalidArgument as error:
            raise InvalidArgument(f"{field}.{error.field}", error.problem) from None


class NotFound(CharterError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CharterError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CharterError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CharterError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CharterError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(CharterError):
    code = grpc.StatusCode.INTERNAL


class Unauthenticated(CharterError):
    """No credentials, or credentials that do not prove who calls (bad, expired)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CharterError):
    """Credentials that do not grant this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps CharterError to its status code for the methods of `package` (unary and
    server-streaming); anything else that escapes a servicer is logged and becomes INTERNAL."""

    def __init__(
        self, package: str = "charter.v1", observe: Callable[[str, str, float], None] | None = None
    ) -> None:
        self._prefix = f"/{package}."
        self._observe = observe
        """Told (method, status code name, seconds) of every unary call (metrics)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, self._observe),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # Under grpc.aio a server-streaming behaviour is an async generator function;
            # grpc's stubs type RpcMethodHandler for the synchronous server only.
            stream = cast("Callable[..., AsyncIterator[Any]]", handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(method: str, context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if isinstance(error, CharterError):
        log.info("request refused", extra={"method": method, "code": error.code.name, "reason": str(error)})
        await context.abort(error.code, str(error))
    log.exception("request failed", extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def _wrap_unary(
    method: str, behaviour: Callable[..., Any], observe: Callable[[str, str, float], None] | None
) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            code = "ABORTED"
            raise
        except Exception as error:  # noqa: BLE001 - mapped to a status in _abort
            code = error.code.name if isinstance(error, CharterError) else "INTERNAL"
            await _abort(method, context, error)
        finally:
            if observe is not None:
                observe(method, code, time.perf_counter() - started)

    return unary


def _wrap_stream(method: str, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for message in behaviour(request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - mapped to a status in _abort
            await _abort(method, context, error)

    return stream

