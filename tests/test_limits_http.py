"""A client key's limits on a loopback gateway: exact under concurrency, with OpenAI's
headers on streamed responses too, and the errors the SDKs raise for them."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from engine import create_app
from engine.config import Config

from .helpers import make_config, read_events, read_until

KEY = "sk-sse-" + "k" * 43
HI = {"messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "mock/mock-1", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {KEY}"}


def limited(**policy: Any) -> Config:
    extra = {k: policy.pop(k) for k in list(policy) if k in ("max_streams_total",)}
    config: dict[str, Any] = {"keys": {"app": {"key": KEY, **policy}}}
    if extra:
        config["max_streams"] = extra["max_streams_total"]
    return make_config(**config)


@pytest.fixture
async def gateway(aiohttp_client):
    async def start(config: Config):
        return await aiohttp_client(create_app(config))

    return start


async def test_racing_requests_admit_exactly_the_rpm_limit(gateway):
    client = await gateway(limited(rpm=50))

    async def one() -> int:
        async with client.post(
            "/v1/chat", json={**HI, "options": {"max_tokens": 1}}, headers=AUTH
        ) as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one() for _ in range(400)))
    assert statuses.count(200) == 50
    assert statuses.count(429) == 350


async def test_over_the_rpm_limit_is_429_with_an_exact_retry_after_and_headers(gateway):
    client = await gateway(limited(rpm=2))
    first = await client.post("/v1/chat", json=HI, headers=AUTH)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    await client.post("/v1/chat", json=HI, headers=AUTH)
    refused = await client.post("/v1/chat", json=HI, headers=AUTH)
    assert refused.status == 429
    body = await refused.json()
    assert body["type"] == "rate_limit_exceeded" and "2 requests per minute" in body["message"]
    # The window frees the first request 60 s after it was admitted: about a minute from now.
    assert 58 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_streamed_responses_carry_the_rate_limit_headers(gateway):
    client = await gateway(limited(rpm=10, tpm=10_000))
    stream = await client.post("/v1/chat/stream", json=HI, headers=AUTH)
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["x-ratelimit-remaining-requests"] == "9"
    assert stream.headers["x-ratelimit-limit-tokens"] == "10000"
    remaining = int(stream.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 10_000 - 40  # the mock's 40 chunks are reserved
    await read_events(stream)
    completion = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
    )
    assert completion.headers["x-ratelimit-remaining-requests"] == "8"
    await completion.read()


async def test_the_openai_sdk_raises_rate_limit_error_and_reads_the_headers(gateway):
    client = await gateway(limited(rpm=1))
    base = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(**CHAT)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(**CHAT, stream=True)
    assert caught.value.code == "rate_limit_exceeded"


async def test_a_request_larger_than_the_token_limit_is_refused_and_not_retried(gateway):
    client = await gateway(limited(tpm=100))
    body = {**HI, "options": {"max_tokens": 500}}
    refused = await client.post("/v1/chat", json=body, headers=AUTH)
    assert refused.status == 429
    assert refused.headers["x-should-retry"] == "false"
    assert "request too large" in (await refused.json())["message"]


async def test_tokens_are_reserved_at_admission_and_reconciled_at_the_end(gateway):
    client = await gateway(limited(tpm=200))
    # 100 reserved: a stream of 100 chunks held open.
    slow = {**HI, "options": {"max_tokens": 100, "interval_ms": 20}}
    stream = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    await read_until(stream, 2)
    # Another 100 do not fit while it runs (its prompt estimate comes on top).
    blocked = await client.post(
        "/v1/chat", json={**HI, "options": {"max_tokens": 100}}, headers=AUTH
    )
    assert blocked.status == 429 and blocked.headers["Retry-After"] == "1"
    await client.post(
        f"/v1/streams/{(await read_until(stream, 1))[0][0].id.split(':')[0]}/stop", headers=AUTH
    )
    await read_events(stream)
    used = (await (await client.get("/v1/key", headers=AUTH)).json())["used"]
    # The stopped stream counts what it really produced, not its reservation.
    assert used["streams"] == 0
    assert 0 < used["tokens_in_window"] < 100
    ok = await client.post("/v1/chat", json={**HI, "options": {"max_tokens": 100}}, headers=AUTH)
    assert ok.status == 200


async def test_concurrent_streams_are_capped_per_key_and_freed_when_one_ends(gateway):
    client = await gateway(limited(max_streams=2))
    slow = {**HI, "options": {"max_tokens": 400, "interval_ms": 10}}
    a = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    b = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    await read_until(a, 2)
    await read_until(b, 2)
    third = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    assert third.status == 429
    assert "max_streams 2" in (await third.json())["message"]
    sid = (await read_until(a, 1))[0][0].id.split(":")[0]
    await client.post(f"/v1/streams/{sid}/stop", headers=AUTH)
    await read_events(a)
    fourth = await client.post(
        "/v1/chat/stream", json={**HI, "options": {"max_tokens": 2}}, headers=AUTH
    )
    assert fourth.status == 200
    await read_events(fourth)
    b.close()


async def test_a_detached_generation_holds_its_slot_until_it_ends(gateway):
    client = await gateway(limited(max_streams=1))
    body = {**HI, "options": {"max_tokens": 30, "interval_ms": 20, "detach": 30}}
    stream = await client.post("/v1/chat/stream", json=body, headers=AUTH)
    await read_until(stream, 2)
    stream.close()  # the client leaves; the generation goes on into its log
    await asyncio.sleep(0.1)
    assert (await client.post("/v1/chat", json=HI, headers=AUTH)).status == 429
    for _ in range(100):
        used = (await (await client.get("/v1/key", headers=AUTH)).json())["used"]
        if used["streams"] == 0:
            break
        await asyncio.sleep(0.05)
    assert used["streams"] == 0
    assert (await client.post("/v1/chat", json=HI, headers=AUTH)).status == 200


async def test_a_spent_budget_is_insufficient_quota_which_the_sdk_does_not_retry(gateway):
    client = await gateway(limited(budget_tokens=60, budget_period="day"))
    first = await client.post("/v1/chat", json={**HI, "options": {"max_tokens": 40}}, headers=AUTH)
    assert first.status == 200
    base = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=3) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(**CHAT, max_tokens=40)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_the_gateway_wide_stream_cap_is_503_with_retry_after(gateway):
    client = await gateway(make_config(max_streams=1))
    slow = {**HI, "options": {"max_tokens": 200, "interval_ms": 10}}
    stream = await client.post("/v1/chat/stream", json=slow)
    await read_until(stream, 2)
    refused = await client.post("/v1/chat/stream", json=slow)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["type"] == "overloaded"
    stream.close()


async def test_a_budget_outlives_a_restart(aiohttp_client, tmp_path):
    config = make_config(
        memory_url=f"sqlite:///{tmp_path}/memory.db",
        keys={"app": {"key": KEY, "budget_tokens": 100, "budget_period": "month"}},
    )
    first = await aiohttp_client(create_app(config))
    spend = {**HI, "options": {"max_tokens": 60}}
    assert (await first.post("/v1/chat", json=spend, headers=AUTH)).status == 200
    await first.close()  # (what was spent is written on the way out)
    second = await aiohttp_client(create_app(config))
    used = (await (await second.get("/v1/key", headers=AUTH)).json())["used"]
    assert used["budget_used"] >= 60
    refused = await second.post("/v1/chat", json=spend, headers=AUTH)
    assert refused.status == 429
    assert (await refused.json())["type"] == "insufficient_quota"
