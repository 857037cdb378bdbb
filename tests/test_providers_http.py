"""The shared HTTP plumbing: error translation, status mapping, Retry-After, backoff."""

from __future__ import annotations

import asyncio
import email.utils
import json

import aiohttp
import pytest

from engine.errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from engine.providers._http import (
    backoff_delay,
    parse_retry_after,
    redact,
    status_error,
    translate_errors,
)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (TimeoutError(), UpstreamTimeout),
        (aiohttp.ServerTimeoutError("read"), UpstreamTimeout),
        (aiohttp.ConnectionTimeoutError("connect"), UpstreamTimeout),
        (aiohttp.ClientPayloadError("cut"), UpstreamError),
        (aiohttp.ServerDisconnectedError(), UpstreamError),
        (aiohttp.ClientOSError(104, "reset"), UpstreamError),
        (aiohttp.ClientError("other"), UpstreamError),
    ],
)
def test_translate_errors_maps_foreign_errors(exc, cls):
    with pytest.raises(UpstreamError) as info, translate_errors():
        raise exc
    assert type(info.value) is cls
    assert info.value.__cause__ is exc


def test_translate_errors_maps_connector_errors_without_the_address_or_key():
    class Key:
        ssl = None
        host = "secret.example"
        port = 443

    exc = aiohttp.ClientConnectorError(Key(), OSError(111, "refused sk-SECRET"))  # type: ignore[arg-type]
    with pytest.raises(UpstreamConnectError) as info, translate_errors(["sk-SECRET"]):
        raise exc
    assert "sk-SECRET" not in info.value.message
    assert "secret.example" not in info.value.message  # the detail goes to the log only


def test_translate_errors_leaves_engine_errors_and_cancellation_alone():
    original = UpstreamRateLimited("x")
    with pytest.raises(UpstreamRateLimited) as info, translate_errors():
        raise original
    assert info.value is original
    with pytest.raises(asyncio.CancelledError), translate_errors():
        raise asyncio.CancelledError


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, UpstreamBadRequest),
        (401, UpstreamAuthError),
        (403, UpstreamAuthError),
        (404, UpstreamBadRequest),
        (422, UpstreamBadRequest),
        (429, UpstreamRateLimited),
        (500, UpstreamError),
        (502, UpstreamError),
        (503, UpstreamUnavailable),
        (529, UpstreamUnavailable),
    ],
)
def test_status_error_classes(status, cls):
    err = status_error(status, b"")
    assert type(err) is cls
    assert err.upstream_status == status


@pytest.mark.parametrize(
    ("body", "message", "kind"),
    [
        ({"error": {"message": "bad key", "type": "invalid_request_error"}}, "bad key", "invalid_request_error"),
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "Overloaded", "overloaded_error"),
        ({"error": {"code": 400, "message": "nope", "status": "INVALID_ARGUMENT"}}, "nope", "INVALID_ARGUMENT"),
    ],
)  # fmt: skip
def test_status_error_keeps_the_provider_message(body, message, kind):
    err = status_error(400, json.dumps(body).encode(), provider="p")
    assert err.message == f"p answered 400: {message}"
    assert err.upstream_type == kind


def test_status_error_quotes_non_json_and_redacts():
    err = status_error(502, b"<html>bad gateway for key sk-1</html>", secrets=["sk-1"])
    assert "bad gateway" in err.message
    assert "sk-1" not in err.message


def test_retry_after_seconds_date_and_ms():
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"Retry-After": "0.5"}) == 0.5
    assert parse_retry_after({"Retry-After": "-3"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=1_000_000) == pytest.approx(30)
    past = email.utils.formatdate(999_000, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=1_000_000) == 0.0


def test_rate_limited_carries_retry_after():
    err = status_error(429, b"{}", headers={"Retry-After": "12"})
    assert isinstance(err, UpstreamRateLimited)
    assert err.retry_after == 12.0
    assert err.status == 429


def test_backoff_is_jittered_exponential_and_capped():
    for attempt in range(8):
        bound = min(8.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt) for _ in range(50)]
        assert all(0 <= d <= bound for d in delays)
        assert len(set(delays)) > 1  # jitter


def test_redact():
    assert redact("a KEY b KEY", ["KEY"]) == "a *** b ***"
    assert redact("nothing", ["", "KEY"]) == "nothing"
