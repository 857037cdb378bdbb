"""A worker's part of every limit when ``serve --workers N`` shares no counter.

Without ``limits_url`` each worker of ``serve --workers N`` counts alone, so
each enforces its :class:`~engine.limits.Share`: the parts add up to the
limit, and N workers together never admit more than it. These tests make one
in-process gateway a given worker (``Gatekeeper.split_across``, which
``Siblings.install`` calls in a real worker) and check what its clients see;
tests/test_workers_limits.py runs the real process tree.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from engine import create_app
from engine.auth import Gatekeeper
from engine.gateway import ENGINE
from engine.keys import KeyPolicy
from engine.keystore import InMemoryKeys
from engine.limits import Share, period_bounds

from .helpers import make_config, read_until

KEY = "sk-sse-" + "w" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = {"messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 1}}


def test_the_parts_add_up_to_the_limit_and_differ_by_one_at_most():
    for workers in range(1, 9):
        for limit in range(0, 40):
            parts = [Share(slot, workers).of(limit) for slot in range(workers)]
            assert sum(parts) == limit, (limit, workers, parts)
            assert max(parts) - min(parts) <= 1


def test_a_policy_part_cuts_every_counted_limit_and_nothing_else():
    policy = KeyPolicy(
        models=["mock/*"], rpm=5, tpm=1001, max_streams=3, budget_tokens=10, budget_period="day"
    )
    first, second = Share(0, 2).policy(policy), Share(1, 2).policy(policy)
    assert (first.rpm, first.tpm, first.max_streams, first.budget_tokens) == (3, 501, 2, 5)
    assert (second.rpm, second.tpm, second.max_streams, second.budget_tokens) == (2, 500, 1, 5)
    assert second.models == ["mock/*"] and second.budget_period == "day"
    assert Share(1, 2).policy(KeyPolicy(rpm=4)).tpm is None
    assert Share(1, 2).empty(KeyPolicy(rpm=4, max_streams=1)) == "max_streams"
    assert Share(0, 2).empty(KeyPolicy(rpm=4, max_streams=1)) is None


@pytest.fixture
async def worker(aiohttp_client):
    """A loopback gateway acting as worker ``slot`` of ``workers``, with one key
    (``policy``) and ``cap``, the gateway-wide ``max_streams``."""

    async def start(slot: int, workers: int = 2, cap: int = 0, **policy):
        config = make_config(keys={"app": {"key": KEY, **policy}}, max_streams=cap)
        app = create_app(config)
        app[ENGINE].gate.split_across(Share(slot, workers))
        return await aiohttp_client(app)

    return start


async def admitted(client, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        async with client.post("/v1/chat", json=HI, headers=AUTH) as response:
            await response.read()
            statuses.append(response.status)
    return statuses


@pytest.mark.parametrize(("slot", "part"), [(0, 2), (1, 1)])
async def test_each_worker_admits_its_part_and_its_headers_say_so(worker, slot, part):
    client = await worker(slot, rpm=3)
    assert (await admitted(client, 4)).count(200) == part
    refused = await client.post("/v1/chat", json=HI, headers=AUTH)
    assert refused.status == 429
    assert refused.headers["x-ratelimit-limit-requests"] == str(part)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    message = (await refused.json())["message"]
    assert "3 requests" not in message and f"{part} requests per minute" in message
    assert "split across 2 workers" in message and "SSE_ENGINE_LIMITS_URL" in message


async def test_racing_requests_on_one_worker_admit_exactly_its_part(worker):
    client = await worker(0, workers=3, rpm=50)  # 17, 17, 16

    async def one() -> int:
        async with client.post("/v1/chat", json=HI, headers=AUTH) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses.count(200) == 17 and statuses.count(429) == 183


async def test_a_worker_whose_part_is_zero_refuses_by_name_and_says_how_to_fix_it(worker):
    client = await worker(1, rpm=1)
    base = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=2) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="mock/mock-1", messages=[{"role": "user", "content": "hi"}]
            )
    response = caught.value.response
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["x-ratelimit-limit-requests"] == "0"
    message = caught.value.body["message"]
    assert "rpm of 1 is split across the gateway's 2 workers" in message
    assert "SSE_ENGINE_LIMITS_URL" in message and "at least 2" in message


async def test_a_zero_part_of_a_budget_is_insufficient_quota(worker):
    client = await worker(1, budget_tokens=1, budget_period="day")
    refused = await client.post("/v1/chat", json=HI, headers=AUTH)
    assert refused.status == 429
    body = await refused.json()
    assert body["type"] == "insufficient_quota" and "budget_tokens of 1" in body["message"]


async def test_the_key_sees_the_limits_and_this_workers_part_of_them(worker):
    client = await worker(1, rpm=5, max_streams=3)
    await admitted(client, 1)
    own = await (await client.get("/v1/key", headers=AUTH)).json()
    assert own["limits"]["rpm"] == 5 and own["limits"]["max_streams"] == 3
    assert own["workers"] == 2
    assert own["worker_limits"]["rpm"] == 2 and own["worker_limits"]["max_streams"] == 1
    assert own["used"]["requests_in_window"] == 1
    assert own["remaining"] == {"rpm": 1, "max_streams": 1}


async def test_the_gateway_wide_stream_cap_is_split_too(worker):
    client = await worker(1, cap=3)  # this worker's part of --max-streams: 1
    slow = {**HI, "options": {"max_tokens": 200, "interval_ms": 10}}
    stream = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    await read_until(stream, 2)
    refused = await client.post("/v1/chat/stream", json=slow, headers=AUTH)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    message = (await refused.json())["message"]
    assert "part of max_streams 3" in message and "split across 2 workers" in message
    stream.close()


def test_counters_in_redis_are_never_split():
    config = make_config(keys={"app": {"key": KEY, "rpm": 3}}, limits_url="redis://127.0.0.1/0")
    gate = Gatekeeper(config)
    gate.split_across(Share(1, 2))
    assert gate.share is None


async def test_each_worker_starts_from_its_part_of_what_the_key_spent():
    config = make_config(keys={"app": {"key": KEY, "budget_tokens": 100, "budget_period": "day"}})
    start, _ = period_bounds("day", time.time())
    parts = []
    for slot in range(2):
        store = InMemoryKeys()
        await store.add_spent("cfg_app", start, 7)
        gate = Gatekeeper(config)
        gate.split_across(Share(slot, 2))
        await gate.open(store)
        key = gate.ring.by_id("cfg_app")
        assert key is not None
        parts.append((await gate.usage(key))["used"]["budget_used"])
        await gate.aclose()
    assert parts == [4, 3]
