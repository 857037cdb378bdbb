"""RedisLimiter beyond the shared contract (test_limits.py): what only a shared counter has.

Two limiters on their own clients stand for two gateways sharing one Redis
(ENGINE_TEST_REDIS_URL; skipped without it, failed under CI). Each test writes
under a fresh key prefix and removes it at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from engine.errors import InvalidFields, QuotaExceeded, RateLimited, StoreUnavailable
from engine.keys import KeyPolicy
from engine.limits import WINDOW, Admission, period_bounds
from tests.test_limits import T0, Clock, redis_limiters, refused, remove_prefix
from tests.test_memory_contract import closed_port, server_url  # noqa: F401 (a fixture)


@pytest.fixture
def url() -> str:
    return server_url("redis")


@pytest.fixture
async def prefix(url) -> AsyncIterator[str]:
    prefix = f"sse-engine-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    await remove_prefix(url, prefix)


@pytest.fixture
async def client(url):
    from engine.keystore_redis import connect

    client = connect(url)
    yield client
    await client.aclose()


class Pair:
    """Two gateways' limiters on one Redis (and, when given, one hand-moved clock)."""

    def __init__(self, limiters) -> None:
        self.a, self.b = limiters

    async def aclose(self) -> None:
        await self.a.aclose()
        await self.b.aclose()


@pytest.fixture
async def pair(url, prefix) -> AsyncIterator[Pair]:
    """Two limiters on Redis's own clock."""
    pair = Pair(await redis_limiters(url, prefix, 2))
    yield pair
    await pair.aclose()


@pytest.fixture
async def clocked(url, prefix) -> AsyncIterator[tuple[Pair, Clock]]:
    """Two limiters sharing a clock the test moves, with leases of 30 s."""
    clock = Clock()
    pair = Pair(await redis_limiters(url, prefix, 2, clock=clock, lease=30.0))
    yield pair, clock
    await pair.aclose()


async def server_time(client) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


async def test_two_gateways_racing_admit_exactly_the_limit(pair):
    policy = KeyPolicy(rpm=100)
    results = await asyncio.gather(
        *(limiter.admit("key_a", policy, 0) for limiter in (pair.a, pair.b) for _ in range(500)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Admission) for r in results) == 100
    assert sum(isinstance(r, RateLimited) for r in results) == 900
    assert not [r for r in results if not isinstance(r, Admission | RateLimited)]


async def test_tokens_reserved_on_one_gateway_count_on_the_other(pair, client):
    policy = KeyPolicy(tpm=1000)
    running = await pair.a.admit("key_a", policy, 600)
    error = await refused(pair.b, policy, 500)
    assert error.retry_after == 1.0  # only a running generation holds them

    ended = await server_time(client)
    running.release(100)  # 100 really used: the other 500 are free again
    await pair.a.flush()
    await pair.b.admit("key_a", policy, 500)
    error = await refused(pair.b, policy, 401)  # 100 + 500 held + 401 > 1000
    # The 100 leave the window a minute after they were counted.
    now = await server_time(client)
    assert ended + WINDOW - now - 0.5 <= error.retry_after <= ended + WINDOW - now + 0.5


async def test_max_streams_holds_across_gateways(pair):
    policy = KeyPolicy(max_streams=3)
    first = await pair.a.admit("key_a", policy, 0)
    await pair.a.admit("key_a", policy, 0)
    await pair.b.admit("key_a", policy, 0)
    await refused(pair.a, policy)
    await refused(pair.b, policy)
    first.release()
    await pair.a.flush()
    await pair.b.admit("key_a", policy, 0)
    await refused(pair.a, policy)


async def test_retry_after_matches_the_window_on_the_servers_clock(pair, client):
    policy = KeyPolicy(rpm=2)
    before = await server_time(client)
    await pair.a.admit("key_a", policy, 0)
    await pair.b.admit("key_a", policy, 0)
    error = await refused(pair.a, policy)
    after = await server_time(client)
    # Due when the first admission (between `before` and now) leaves the window.
    assert before + WINDOW - after <= error.retry_after <= WINDOW
    assert error.retry_after > WINDOW - 5


async def test_a_budget_is_shared_by_the_gateways(url, prefix):
    seen: list[tuple[str, float, int]] = []
    a, b = await redis_limiters(url, prefix, 2, spent=lambda *args: seen.append(args))
    try:
        policy = KeyPolicy(budget_tokens=100, budget_period="day")
        running = await a.admit("key_a", policy, 70)
        error = await refused(b, policy, 31)
        assert isinstance(error, QuotaExceeded) and error.retry is False
        start, end = period_bounds("day", time.time())
        assert 0 < error.retry_after <= end - start
        running.release(60)
        await a.flush()
        assert [(k, tokens) for k, _, tokens in seen] == [("key_a", 60)]
        assert seen[0][1] in (start, start + 86400)  # midnight may pass during the test
        await b.admit("key_a", policy, 40)
        await refused(a, policy, 1)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_crashed_gateways_slot_is_freed_when_its_lease_lapses(clocked):
    pair, clock = clocked
    policy = KeyPolicy(max_streams=1, tpm=100, budget_tokens=1000)
    await pair.a.admit("key_a", policy, 100)  # then gateway a dies: nobody renews it
    clock.advance(29.5)
    await refused(pair.b, policy)
    clock.advance(0.5)  # 30 s: the lease has lapsed, its share is given back
    held = await pair.b.admit("key_a", policy, 100)
    # The reservation and the budget hold went with the slot.
    assert held.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_late_release_of_a_lapsed_lease_gives_back_nothing_twice(clocked):
    pair, clock = clocked
    policy = KeyPolicy(max_streams=3, tpm=100)
    stalled = await pair.a.admit("key_a", policy, 50)
    clock.advance(31)
    await pair.b.admit("key_a", policy, 80)  # the lapsed lease is given back first
    stalled.release(20)  # gateway a was only stalled: its usage still counts
    await pair.a.flush()
    # 20 used + 80 held = 100. Had the late release given its 50 back again
    # (out of b's 80), this would fit.
    error = await refused(pair.b, policy, 1)
    assert error.retry_after == WINDOW  # when the 20 leave, counted just now


async def test_renewal_keeps_a_running_generations_lease(clocked):
    pair, clock = clocked
    policy = KeyPolicy(max_streams=1)
    running = await pair.a.admit("key_a", policy, 0)
    for _ in range(5):  # 100 s in all, renewed every 20 s
        clock.advance(20)
        assert await pair.a.renew() == 1
        await refused(pair.b, policy)
    running.release()
    await pair.a.flush()
    assert await pair.a.renew() == 0  # nothing live to renew
    await pair.b.admit("key_a", policy, 0)


async def test_the_renewal_task_renews_on_its_own(url, prefix):
    # Real time: leases of 0.6 s renewed every 0.1 s outlive their first expiry.
    from engine.keystore_redis import connect
    from engine.limits_redis import RedisLimiter

    a = RedisLimiter(connect(url), url, prefix=prefix, lease=0.6, renew=0.1)
    (b,) = await redis_limiters(url, prefix, 1)
    try:
        policy = KeyPolicy(max_streams=1)
        running = await a.admit("key_a", policy, 0)
        await asyncio.sleep(1.5)  # time passing, not synchronisation: leases are clocks
        await refused(b, policy)
        running.release()
        await a.flush()
        await b.admit("key_a", policy, 0)
    finally:
        await a.aclose()
        await b.aclose()


async def test_aclose_waits_for_releases_under_way(pair):
    policy = KeyPolicy(max_streams=1)
    running = await pair.a.admit("key_a", policy, 0)
    running.release()
    await pair.a.aclose()  # without flush(): aclose sends it
    await pair.b.admit("key_a", policy, 0)
    running.release()  # idempotent, and harmless once closed
    with pytest.raises(StoreUnavailable):
        await pair.a.admit("key_a", policy, 0)


async def test_a_retried_admission_takes_nothing_twice(clocked, prefix):
    # redis-py retries a script after a connection error, when the first try
    # may have run: the same lease id must not take its shares again.
    pair, clock = clocked
    limiter = pair.a
    policy = KeyPolicy(max_streams=2, tpm=100)
    args = [repr(clock.now), "lease-1", 60, "30.0", 65000, 2, "", 100, "", "month", "", 0]
    keys = limiter.keys("key_a")
    first = await limiter._admit(keys=keys, args=args)
    again = await limiter._admit(keys=keys, args=args)
    assert first[0] == again[0] == 0
    assert first[5] == again[5] == 60  # tokens held: once
    await pair.b.admit("key_a", policy, 40)  # 60 + 40 = 100, one slot left
    await refused(pair.b, policy)


async def test_scripts_are_loaded_again_after_a_flush(pair, client):
    # A restarted Redis (or SCRIPT FLUSH) has none of them: EVALSHA fails,
    # and redis-py loads the script and runs it again.
    policy = KeyPolicy(max_streams=1)
    await client.script_flush()
    running = await pair.a.admit("key_a", policy, 0)
    await client.script_flush()
    running.release()
    await pair.a.flush()
    held = await pair.b.admit("key_a", policy, 0)  # the release went through
    await client.script_flush()
    assert await pair.b.renew() == 1  # and in a pipeline
    held.release()


async def test_every_key_expires_when_idle(url, prefix, client):
    (limiter,) = await redis_limiters(url, prefix, 1)
    try:
        policy = KeyPolicy(rpm=5, tpm=100, max_streams=2, budget_tokens=100)
        (await limiter.admit("key_a", policy, 10)).release(5)
        await limiter.admit("key_a", policy, 10)
        await limiter.flush()
        keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}*")]
        assert sorted(keys) == sorted(limiter.keys("key_a"))
        budget = limiter.keys("key_a")[-1]
        for key in keys:
            ttl = await client.pttl(key) / 1000
            if key == budget:
                start, end = period_bounds("month", time.time())
                assert 0 < ttl <= end - start + 3600
            else:
                assert WINDOW < ttl <= WINDOW + 5  # max(window, 30 s lease) + 5
    finally:
        await limiter.aclose()


async def test_prefixes_keep_limiters_apart(url, prefix):
    from engine.keystore_redis import connect
    from engine.limits_redis import RedisLimiter

    policy = KeyPolicy(rpm=1)
    a = RedisLimiter(connect(url), url, prefix=prefix)
    b = RedisLimiter(connect(url), url, prefix=prefix + "other:")
    try:
        await a.admit("key_a", policy, 0)
        await b.admit("key_a", policy, 0)
        await refused(a, policy)
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize(
    "period", ["day", "week", "month"], ids=lambda period: f"budget_period={period}"
)
async def test_the_scripts_calendar_is_period_bounds(url, prefix, period):
    # The budget period is computed in Lua from Redis's clock: it must be the
    # one period_bounds gives, for any moment (leap years, month ends, Mondays).
    moments = [T0 + n * 7_919_311.37 for n in range(-200, 60)]  # 1973 to 2038, odd offsets
    moments += [
        951782400.0 - 0.5,
        951782400.0,
        4107542400.0 - 1,
        4107542400.0,
    ]  # 2000-02-29, 2100-03
    seen: list[float] = []
    clock = Clock()
    (limiter,) = await redis_limiters(
        url, prefix, 1, clock=clock, spent=lambda k, start, n: seen.append(start)
    )
    try:
        policy = KeyPolicy(budget_tokens=1, budget_period=period)
        for index, moment in enumerate(moments):
            clock.now = moment
            start, end = period_bounds(period, moment)
            (await limiter.admit(f"key_{index}", policy, 1)).release(1)
            await limiter.flush()
            error = await refused(limiter, policy, 1, key=f"key_{index}")
            assert error.retry_after == end - moment, (period, moment)
            assert seen[-1] == start, (period, moment)
    finally:
        await limiter.aclose()


async def test_an_unreachable_redis_fails_closed_promptly(closed_port):  # noqa: F811
    from engine.keystore_redis import connect
    from engine.limits_redis import RedisLimiter, open_limiter

    url = f"redis://:s3cret@127.0.0.1:{closed_port}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await open_limiter(url)
    assert "s3cret" not in str(info.value) and info.value.__cause__ is not None
    limiter = RedisLimiter(connect(url), url)  # one whose server went away
    try:
        with pytest.raises(StoreUnavailable) as info:
            await limiter.admit("key_a", KeyPolicy(rpm=1), 0)
        assert info.value.status == 503
        assert "s3cret" not in str(info.value)
        assert await limiter.renew() == 0
    finally:
        await limiter.aclose()
    assert time.monotonic() - started < 10


async def test_open_limiter_takes_only_redis_urls():
    from engine.limits_redis import open_limiter

    with pytest.raises(InvalidFields) as info:
        await open_limiter("postgresql://u:s3cret@localhost/x")
    assert "s3cret" not in str(info.value)


async def test_open_limiter_connects(url, prefix):
    from engine.limits_redis import open_limiter

    limiter = await open_limiter(url, prefix=prefix)
    try:
        await limiter.admit("key_a", KeyPolicy(rpm=1), 0)
    finally:
        await limiter.aclose()


async def test_two_gateways_with_limits_url_share_one_keys_limits(aiohttp_client, url):
    # The wiring end to end: Config.limits_url gives each gateway a RedisLimiter.
    from engine import create_app

    from .helpers import make_config

    alias = f"shared-{uuid.uuid4().hex[:12]}"
    key = "sk-sse-" + "s" * 43
    config = make_config(keys={alias: {"key": key, "rpm": 30, "max_streams": 50}}, limits_url=url)
    clients = [await aiohttp_client(create_app(config)) for _ in range(2)]
    body = {"messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 1}}

    async def one(n: int) -> tuple[int, dict[str, str]]:
        async with clients[n % 2].post(
            "/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            await response.read()
            return response.status, dict(response.headers)

    try:
        results = await asyncio.gather(*(one(n) for n in range(200)))
        statuses = [status for status, _ in results]
        assert statuses.count(200) == 30
        assert statuses.count(429) == 170
        refusal = next(headers for status, headers in results if status == 429)
        assert 58 <= int(refusal["Retry-After"]) <= 60
        assert refusal["x-ratelimit-remaining-requests"] == "0"
        # Each gateway's GET /v1/key counts both gateways' requests.
        for client in clients:
            async with client.get("/v1/key", headers={"Authorization": f"Bearer {key}"}) as r:
                view = await r.json()
            assert view["used"]["requests_in_window"] == 30
            assert view["remaining"] == {"rpm": 0, "max_streams": 50}
    finally:
        await remove_prefix(url, f"sse-engine:limits:{{cfg_{alias}}}")
