"""The fakes' bytes: exactly the framing each real API sends, and the delivery modes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from engine.sse import Decoder
from engine.testing import FakeAnthropic, FakeGemini, FakeOpenAI, Script, serve


async def _post(fake, path: str, body: dict, **params: str) -> tuple[int, dict, bytes]:
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body, params=params) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_openai_stream_bytes():
    fake = FakeOpenAI(Script(tokens=["Hi", " é"], model="gpt-x"))
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = await _post(fake, "/v1/chat/completions", body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    assert all(f.startswith(b"data: {") for f in frames[:-2])
    assert b"\r" not in raw and "é".encode() in raw  # raw UTF-8, LF only
    first = json.loads(frames[0][6:])
    assert list(first) == [
        "id", "object", "created", "model", "service_tier", "system_fingerprint", "choices", "usage"
    ]  # fmt: skip
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert first["usage"] is None
    assert frames[0].startswith(b'data: {"id":"chatcmpl-')  # compact JSON
    usage = json.loads(frames[-3][6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 11


async def test_openai_omits_usage_unless_asked():
    fake = FakeOpenAI(Script(tokens=["Hi"]))
    _, _, raw = await _post(fake, "/v1/chat/completions", {"model": "m", "stream": True})
    events = Decoder().feed(raw)
    assert all("usage" not in json.loads(e.data) for e in events[:-1])
    assert events[-1].data == "[DONE]"


async def test_anthropic_stream_bytes():
    fake = FakeAnthropic(Script(tokens=["Hi"]))
    _, _, raw = await _post(fake, "/v1/messages", {"model": "c", "stream": True, "max_tokens": 5})
    events = Decoder().feed(raw)
    assert [e.event for e in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw
    assert raw.startswith(b'event: message_start\ndata: {"type":"message_start","message":{')


async def test_gemini_stream_bytes_use_crlf_and_google_json():
    fake = FakeGemini(Script(tokens=["Hi", "!"]))
    _, _, raw = await _post(fake, "/v1beta/models/g:streamGenerateContent", {}, alt="sse")
    assert raw.startswith(
        b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"}'
    )
    assert raw.endswith(b"}\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == 2 and b"\n\n" not in raw.replace(b"\r\n", b"")
    last = json.loads(Decoder().feed(raw)[-1].data)
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 2


async def test_gemini_without_alt_sse_streams_a_json_array():
    fake = FakeGemini(Script(tokens=["a", "b"]))
    _, _, raw = await _post(fake, "/v1beta/models/g:streamGenerateContent", {})
    items = json.loads(raw)
    assert [i["candidates"][0]["content"]["parts"][0]["text"] for i in items] == ["a", "b"]


@pytest.mark.parametrize("cls", [FakeOpenAI, FakeAnthropic, FakeGemini])
async def test_modes_change_bytes_not_events(cls):
    path = {
        FakeOpenAI: "/v1/chat/completions",
        FakeAnthropic: "/v1/messages",
        FakeGemini: "/v1beta/models/g:streamGenerateContent",
    }[cls]
    body = {"model": "m", "stream": True}
    params = {"alt": "sse"} if cls is FakeGemini else {}
    _, _, plain = await _post(cls(Script()), path, body, **params)
    noisy = Script(crlf=True, comments=True, unknown_fields=True, fragment=2)
    _, _, raw = await _post(cls(noisy), path, body, **params)
    assert b"\r\n" in raw and b": keep-alive" in raw and b"x_future_field" in raw
    strip = {"x_future_field"}
    events_plain = [(e.event, e.data) for e in Decoder().feed(plain) if e.event != "ping"]
    events_noisy = [
        (e.event, json.dumps({k: v for k, v in json.loads(e.data).items() if k not in strip}))
        if e.data != "[DONE]"
        else (e.event, e.data)
        for e in Decoder().feed(raw)
        if e.event not in ("ping", "future_event")
    ]
    normalise = [(e, json.dumps(json.loads(d)) if d != "[DONE]" else d) for e, d in events_plain]
    assert events_noisy == normalise


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_error_status_bodies(status):
    fake = FakeAnthropic(Script(status=status, retry_after="3" if status == 429 else None))
    got, headers, raw = await _post(fake, "/v1/messages", {"stream": True})
    assert got == status
    assert json.loads(raw)["type"] == "error"
    assert (headers.get("Retry-After") == "3") == (status == 429)


async def test_queued_scripts_are_used_once_each_and_requests_recorded():
    fake = FakeOpenAI(Script(tokens=["default"]))
    fake.push(Script(status=500), Script(tokens=["second"]))
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        seen = []
        for _ in range(3):
            async with session.post(
                url + "/v1/chat/completions", json={"stream": False}, headers={"X-Test": "1"}
            ) as resp:
                seen.append(
                    resp.status
                    if resp.status != 200
                    else (await resp.json())["choices"][0]["message"]["content"]
                )
    assert seen == [500, "second", "default"]
    assert [r.headers["X-Test"] for r in fake.requests] == ["1", "1", "1"]
    assert fake.requests[0].json == {"stream": False}


async def test_fake_notices_a_disconnect():
    fake = FakeOpenAI(Script(tokens=["a", "b"], interval_ms=10_000))
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        resp = await session.post(url + "/v1/chat/completions", json={"stream": True})
        await resp.content.readany()
        resp.close()
        await asyncio.wait_for(fake.requests[0].disconnected.wait(), 1)
        assert fake.requests[0].disconnected_at is not None
