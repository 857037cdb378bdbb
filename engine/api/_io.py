"""Reading requests and writing JSON responses, the same way on every route."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
from aiohttp import StreamReader, web

from ..errors import (
    BadRequest,
    InvalidFields,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..gateway import ENGINE
from ..middleware import SERVER_HEADER
from ..wire import MAX_JSON_DEPTH

__all__ = ["SERVER_HEADER", "json_response", "read_json"]

T = TypeVar("T")


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        body=msgspec.json.encode(obj),
        status=status,
        content_type="application/json",
        headers=headers,
    )
    response.headers["Server"] = SERVER_HEADER
    return response


async def read_json(request: web.Request, type: type[T]) -> T:
    """Read and validate a JSON body.

    Raises 415 (wrong type), 413 (too large), 408 (sent too slowly), 400
    (malformed, or nested too deeply for the parser), 422 (invalid fields).
    """
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    config = request.app[ENGINE].config
    limit = config.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    content = request.content
    body: bytes | bytearray
    if content.is_eof():  # all of it arrived with the head (the usual case): no wait
        body = await content.read()
        if len(body) > limit:  # a chunked body has no Content-Length to check first
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    else:
        # A body sent a byte at a time would hold the connection and the
        # handler for ever (slowloris after the head): bounded like the head.
        try:
            async with asyncio.timeout(config.header_timeout):
                body = await _read_body(content, limit)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {config.header_timeout:g} s"
            ) from None
    try:
        return msgspec.json.decode(body, type=type)
    # ValidationError subclasses DecodeError: catch it first.
    except msgspec.ValidationError as exc:
        raise InvalidFields(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        # msgspec stops at the interpreter's recursion limit (about 1,000 levels,
        # in an unknown field too); values we keep are bounded far lower
        # (wire.MAX_JSON_DEPTH).
        raise BadRequest(f"JSON nested too deeply (limit {MAX_JSON_DEPTH} levels)") from exc


async def _read_body(content: StreamReader, limit: int) -> bytearray:
    body = bytearray()
    async for data in content.iter_any():
        body += data
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return body
