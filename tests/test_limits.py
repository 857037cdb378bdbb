"""Per-key limits: the rules of engine.limits, on both limiters.

The behaviours are one contract run on :class:`LocalLimiter` and on
:class:`RedisLimiter` (the real Redis named by ENGINE_TEST_REDIS_URL; it skips
without one, and fails under CI, as the memory contract does), both on an
injected clock, so every ``Retry-After`` is checked to the exact value. What
only Redis has (two gateways sharing counters, leases) is in test_limits_redis.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from engine.errors import QuotaExceeded, RateLimited
from engine.keys import KeyPolicy
from engine.limits import WINDOW, Admission, LocalLimiter, duration, period_bounds, rate_headers
from tests.test_memory_contract import server_url

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: whole seconds keep the arithmetic exact


def at(text: str) -> float:
    """Unix seconds of an ISO time in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand (both a limiter's clock and its wall)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spent() -> list[tuple[str, float, int]]:
    """What a limiter told its key store was spent against budgets."""
    return []


async def redis_limiters(url: str, prefix: str, count: int, **options):
    """``count`` RedisLimiters on their own clients (like gateways), sharing ``prefix``."""
    from engine.keystore_redis import connect
    from engine.limits_redis import RedisLimiter

    return [RedisLimiter(connect(url), url, prefix=prefix, **options) for _ in range(count)]


async def remove_prefix(url: str, prefix: str) -> None:
    from engine.keystore_redis import connect

    client = connect(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def limiter(request, clock, spent) -> AsyncIterator:
    def record(key_id: str, period_start: float, tokens: int) -> None:
        spent.append((key_id, period_start, tokens))

    if request.param == "local":
        yield LocalLimiter(clock=clock, wall=clock, spent=record)
        return
    url = server_url("redis")
    prefix = f"sse-engine-test:{uuid.uuid4().hex[:12]}:"
    (redis,) = await redis_limiters(url, prefix, 1, clock=clock, spent=record)
    try:
        yield redis
    finally:
        await redis.aclose()
        await remove_prefix(url, prefix)


async def settled(limiter) -> None:
    """Wait for released shares to land (a RedisLimiter sends them in a task)."""
    flush = getattr(limiter, "flush", None)
    if flush is not None:
        await flush()


async def release(limiter, admission: Admission, used: int | None = None) -> None:
    admission.release(used)
    await settled(limiter)


async def refused(limiter, policy: KeyPolicy, reserve: int = 0, key: str = "key_a"):
    with pytest.raises(RateLimited) as info:
        await limiter.admit(key, policy, reserve)
    return info.value


# -- requests per minute -----------------------------------------------------------


async def test_a_race_for_the_last_units_admits_exactly_the_limit(limiter):
    policy = KeyPolicy(rpm=100)
    results = await asyncio.gather(
        *(limiter.admit("key_a", policy, 0) for _ in range(1000)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    refusals = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) == 100
    assert len(refusals) == 900
    assert all(r.status == 429 and r.type == "rate_limit_exceeded" for r in refusals)
    assert all(r.retry_after == WINDOW for r in refusals)  # the clock stood still


async def test_rpm_is_a_sliding_window_with_an_exact_retry_after(limiter, clock):
    policy = KeyPolicy(rpm=3)
    for _ in range(3):  # at T0, T0+10, T0+20
        await release(limiter, await limiter.admit("key_a", policy, 0))
        clock.advance(10)
    assert clock.now == T0 + 30

    assert (await refused(limiter, policy)).retry_after == 30.0  # T0's expires at T0+60
    clock.advance(29.75)
    assert (await refused(limiter, policy)).retry_after == 0.25
    clock.advance(0.25)  # T0+60: the first admission has left the window
    await limiter.admit("key_a", policy, 0)
    assert (await refused(limiter, policy)).retry_after == 10.0  # T0+10's, at T0+70


async def test_a_window_that_must_free_several_admissions_waits_for_the_last_of_them(
    limiter, clock
):
    # Lowering a key's rpm below what its window holds: it must wait until
    # enough admissions expired to come under the new limit, not just one.
    for _ in range(4):  # T0, T0+1, T0+2, T0+3
        await limiter.admit("key_a", KeyPolicy(rpm=10), 0)
        clock.advance(1)
    error = await refused(limiter, KeyPolicy(rpm=2))
    assert error.retry_after == T0 + 2 + WINDOW - clock.now  # 4 - 2 + 1 = 3 must expire


async def test_refused_requests_take_nothing(limiter):
    policy = KeyPolicy(rpm=5, tpm=100)
    for _ in range(20):
        await refused(limiter, policy, reserve=101)  # too large
    for _ in range(5):
        await limiter.admit("key_a", policy, 10)
    await refused(limiter, policy)


async def test_limits_are_per_key(limiter):
    policy = KeyPolicy(rpm=1, max_streams=1)
    await limiter.admit("key_a", policy, 0)
    await refused(limiter, policy, key="key_a")
    await limiter.admit("key_b", policy, 0)


async def test_a_policy_without_limits_admits_everything(limiter):
    for _ in range(50):
        admission = await limiter.admit("key_a", KeyPolicy(), 1000)
        assert admission.headers == {}


# -- tokens per minute -------------------------------------------------------------


async def test_a_request_larger_than_tpm_is_refused_and_not_retried(limiter):
    error = await refused(limiter, KeyPolicy(tpm=100), reserve=101)
    assert error.retry is False  # the SDKs would retry a 429 otherwise
    assert error.status == 429
    assert "request too large" in error.message and "101" in error.message
    await limiter.admit("key_a", KeyPolicy(tpm=100), 100)  # exactly the limit fits


async def test_reservations_of_running_generations_count(limiter):
    policy = KeyPolicy(tpm=100)
    first = await limiter.admit("key_a", policy, 60)
    error = await refused(limiter, policy, reserve=50)
    # Only a running generation holds the tokens: nobody knows when it ends.
    assert error.retry_after == 1.0
    assert getattr(error, "retry", True) is True
    await limiter.admit("key_a", policy, 40)  # 60 + 40 = 100
    await refused(limiter, policy, reserve=1)
    await release(limiter, first, 0)
    await limiter.admit("key_a", policy, 60)


async def test_real_usage_replaces_the_reservation(limiter, clock):
    policy = KeyPolicy(tpm=100)
    admission = await limiter.admit("key_a", policy, 80)
    clock.advance(5)
    await release(limiter, admission, 30)  # 30 used, at T0+5
    clock.advance(5)
    await limiter.admit("key_a", policy, 70)  # 30 + 70 held = 100
    error = await refused(limiter, policy, reserve=1)
    # Only the 30 in the window can expire: at T0+5+60, 55 s from T0+10.
    assert error.retry_after == 55.0


async def test_tpm_retry_after_waits_for_enough_of_the_window(limiter, clock):
    policy = KeyPolicy(tpm=100)
    for used in (20, 30, 40):  # ending at T0, T0+10, T0+20
        await release(limiter, await limiter.admit("key_a", policy, used), used)
        clock.advance(10)
    # 90 in the window; 60 more need 50 of it gone: the 20 and the 30, at T0+10+60.
    assert (await refused(limiter, policy, reserve=60)).retry_after == T0 + 70 - clock.now
    assert (await refused(limiter, policy, reserve=11)).retry_after == T0 + 60 - clock.now


async def test_release_is_idempotent(limiter):
    policy = KeyPolicy(max_streams=1, tpm=100)
    admission = await limiter.admit("key_a", policy, 50)
    admission.release(40)
    admission.release(40)
    admission.release()
    await settled(limiter)
    second = await limiter.admit("key_a", policy, 60)  # 40 used + 60 = 100: counted once
    await refused(limiter, policy)  # the one slot, held by `second`
    await release(limiter, second, 0)
    await refused(limiter, policy, reserve=61)


async def test_release_without_usage_counts_nothing(limiter):
    policy = KeyPolicy(tpm=100)
    await release(limiter, await limiter.admit("key_a", policy, 100), None)
    await limiter.admit("key_a", policy, 100)


# -- streams -----------------------------------------------------------------------


async def test_max_streams_counts_running_generations(limiter):
    policy = KeyPolicy(max_streams=2)
    first = await limiter.admit("key_a", policy, 0)
    await limiter.admit("key_a", policy, 0)
    error = await refused(limiter, policy)
    assert error.retry_after == 1.0
    assert "max_streams 2" in error.message
    await release(limiter, first)
    await limiter.admit("key_a", policy, 0)


# -- budgets -----------------------------------------------------------------------


async def test_a_spent_budget_is_insufficient_quota_until_the_next_period(limiter, clock, spent):
    clock.now = at("2024-02-29T23:59:00")  # a leap day
    policy = KeyPolicy(budget_tokens=100, budget_period="day")
    await release(limiter, await limiter.admit("key_a", policy, 60), 60)
    assert spent == [("key_a", at("2024-02-29T00:00:00"), 60)]

    error = await refused(limiter, policy, reserve=50)
    assert isinstance(error, QuotaExceeded)
    assert error.type == "insufficient_quota" and error.status == 429
    assert error.retry is False
    assert error.retry_after == 60.0  # to midnight UTC
    assert "60 used or reserved" in error.message
    await limiter.admit("key_a", policy, 40)  # what is left still fits

    clock.advance(60)  # 2024-03-01: a new day
    await limiter.admit("key_a", policy, 100)


@pytest.mark.parametrize(
    ("period", "now", "ends"),
    [
        ("day", "2023-12-31T12:00:00", "2024-01-01T00:00:00"),
        ("week", "2024-03-03T23:00:00", "2024-03-04T00:00:00"),  # Sunday -> Monday
        ("week", "2024-03-04T00:00:00", "2024-03-11T00:00:00"),  # Monday begins one
        ("month", "2024-02-10T06:30:00", "2024-03-01T00:00:00"),  # 29 days
        ("month", "2023-02-10T06:30:00", "2023-03-01T00:00:00"),  # 28 days
        ("month", "2023-12-31T23:59:59", "2024-01-01T00:00:00"),
        ("month", "2024-04-30T10:00:00", "2024-05-01T00:00:00"),
    ],
)
async def test_a_budget_renews_at_its_utc_calendar_period(limiter, clock, period, now, ends):
    clock.now = at(now)
    policy = KeyPolicy(budget_tokens=10, budget_period=period)
    await release(limiter, await limiter.admit("key_a", policy, 10), 10)
    error = await refused(limiter, policy, reserve=1)
    assert error.retry_after == at(ends) - clock.now
    clock.now = at(ends) - 0.5
    await refused(limiter, policy, reserve=1)
    clock.now = at(ends)
    await limiter.admit("key_a", policy, 10)


async def test_a_budget_counts_reservations_of_running_generations(limiter, spent):
    policy = KeyPolicy(budget_tokens=100)
    running = await limiter.admit("key_a", policy, 70)
    await refused(limiter, policy, reserve=40)
    await release(limiter, running, 10)  # 10 used: the reservation of 70 is given back
    await limiter.admit("key_a", policy, 90)
    assert [tokens for _, _, tokens in spent] == [10]


async def test_usage_across_a_period_end_counts_in_the_new_period(limiter, clock, spent):
    clock.now = at("2024-05-31T23:59:50")
    policy = KeyPolicy(budget_tokens=100, budget_period="month")
    running = await limiter.admit("key_a", policy, 50)
    clock.advance(20)  # June
    await release(limiter, running, 30)
    assert spent == [("key_a", at("2024-06-01T00:00:00"), 30)]
    await refused(limiter, policy, reserve=71)
    await limiter.admit("key_a", policy, 70)


async def test_a_hold_from_the_last_period_is_not_given_back_to_the_new_one(limiter, clock):
    clock.now = at("2024-05-31T23:59:50")
    policy = KeyPolicy(budget_tokens=100, budget_period="month")
    old = await limiter.admit("key_a", policy, 50)
    clock.advance(20)
    await limiter.admit("key_a", policy, 60)  # June: the budget starts anew, 60 held
    await release(limiter, old, 0)  # its 50 were held in May, not June
    await refused(limiter, policy, reserve=41)
    await limiter.admit("key_a", policy, 40)


async def test_a_seeded_budget_starts_from_what_the_key_store_says(limiter, clock):
    start, _ = period_bounds("month", clock.now)
    limiter.seed[("key_a", start)] = 90
    limiter.seed[("key_a", start - 86400 * 40)] = 1000  # another period: not counted
    policy = KeyPolicy(budget_tokens=100)
    await refused(limiter, policy, reserve=11)
    await limiter.admit("key_a", policy, 10)


# -- headers -----------------------------------------------------------------------


async def test_rate_headers_say_the_limits_what_is_left_and_when_it_resets(limiter, clock):
    policy = KeyPolicy(rpm=10, tpm=1000)
    first = await limiter.admit("key_a", policy, 100)
    assert first.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",  # the reservation counts
        "x-ratelimit-reset-tokens": "1m0s",
    }
    await release(limiter, first, 50)
    clock.advance(30)
    second = await limiter.admit("key_a", policy, 0)
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert second.headers["x-ratelimit-remaining-tokens"] == "950"
    assert second.headers["x-ratelimit-reset-tokens"] == "30s"  # the 50 leave at T0+60
    only_rpm = await limiter.admit("key_b", KeyPolicy(rpm=5), 10)
    assert set(only_rpm.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }


async def test_a_refusal_carries_the_rate_headers_too(limiter, clock):
    policy = KeyPolicy(rpm=2, tpm=100)
    await release(limiter, await limiter.admit("key_a", policy, 30), 20)  # at T0
    clock.advance(15)
    await limiter.admit("key_a", policy, 30)  # running, at T0+15
    clock.advance(5)
    error = await refused(limiter, policy)
    assert error.retry_after == 40.0  # T0's admission leaves at T0+60
    assert error.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "55s",  # the window is empty at T0+15+60
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "50",  # 20 used + 30 held
        "x-ratelimit-reset-tokens": "1m0s",  # a reservation is held: a full window
    }
    quota = await refused(limiter, KeyPolicy(budget_tokens=5), 6, key="key_b")
    assert quota.headers == {}  # no rpm, no tpm: no headers to send


# -- LocalLimiter and the helpers only -----------------------------------------------


def test_duration_writes_resets_as_openai_does():
    assert duration(0) == "0s"
    assert duration(-1) == "0s"
    assert duration(0.02) == "20ms"
    assert duration(0.0001) == "1ms"
    assert duration(1.5) == "1.5s"
    assert duration(59.25) == "59.25s"
    assert duration(60) == "1m0s"
    assert duration(360) == "6m0s"
    assert duration(61.2) == "1m2s"


def test_rate_headers_never_go_negative():
    headers = rate_headers(
        KeyPolicy(rpm=1, tpm=10), requests=5, requests_reset=1, tokens=50, tokens_reset=2
    )
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2024-02-29T13:00:00", "2024-02-29T00:00:00", "2024-03-01T00:00:00"),
        ("week", "2024-01-07T23:59:59", "2024-01-01T00:00:00", "2024-01-08T00:00:00"),
        ("month", "2024-12-15T00:00:00", "2024-12-01T00:00:00", "2025-01-01T00:00:00"),
        ("month", "2100-02-28T00:00:00", "2100-02-01T00:00:00", "2100-03-01T00:00:00"),
    ],
)
def test_period_bounds(period, now, start, end):
    assert period_bounds(period, at(now)) == (at(start), at(end))


async def test_usage_reports_the_window_and_the_budget(limiter, clock):
    policy = KeyPolicy(rpm=10, tpm=100, budget_tokens=1000)
    running = await limiter.admit("key_a", policy, 40)
    await release(limiter, await limiter.admit("key_a", policy, 5), 5)
    assert await limiter.usage("key_a", policy) == {
        "requests_in_window": 2,
        "tokens_in_window": 45,  # 5 used + 40 held
        "streams": 1,
        "budget_used": 45,
    }
    await release(limiter, running, 20)
    clock.advance(WINDOW)
    assert await limiter.usage("key_a", policy) == {
        "requests_in_window": 0,
        "tokens_in_window": 0,
        "streams": 0,
        "budget_used": 25,
    }
    assert (await limiter.usage("key_never", KeyPolicy()))["budget_used"] is None
