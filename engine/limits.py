"""Per-key limits, exact under concurrency: :class:`LocalLimiter` and :class:`Admission`.

A request that starts a generation is *admitted* once, before its upstream
request: every limit of its key is checked and its share taken in one step
with no ``await`` in between, so a thousand requests racing for the last unit
of a limit admit exactly the limit, never more (LiteLLM #18953 is the
opposite: limits enforced well below their setting). The share is given back
when the generation ends (:meth:`Admission.release`), with the real usage.

- ``rpm``: a sliding window of 60 s (not a fixed minute, which lets twice the
  limit through across a minute's boundary, nor a token bucket, which refills
  while the burst is still running).
- ``tpm``: the same window over tokens. Admission reserves the request's prompt
  estimate plus its ``max_tokens`` (held while the generation runs, so a long
  stream counts from its first byte; LiteLLM #41610 never counts streams), and
  the real usage replaces the reservation at the end. A request whose own
  reservation exceeds the limit can never fit: 429 that says so, not retried.
- ``max_streams``: generations running at once.
- ``budget_tokens``: tokens per UTC day, week or month; spent, it is 429
  ``insufficient_quota`` until the next period.

``Retry-After`` is exact: the moment enough of the window expires for the
request to fit (1 s when only running generations hold what it needs, whose
end nobody can know). The response headers are OpenAI's ``x-ratelimit-*``.

Each process counts for itself; with several workers or boxes the counters
live in Redis (:mod:`engine.limits_redis`), which runs the same rules in Lua.
Without Redis, a worker of ``serve --workers N`` enforces its :class:`Share`
of every limit, so that the workers together never admit more than the limit
(the price: a key can be refused by one worker while another has room).
"""

from __future__ import annotations

import calendar
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

import msgspec

from .errors import QuotaExceeded, RateLimited
from .keys import KeyPolicy

__all__ = [
    "WINDOW",
    "Admission",
    "Limiter",
    "LocalLimiter",
    "Share",
    "duration",
    "period_bounds",
    "rate_headers",
]

#: Seconds of the sliding window of ``rpm`` and ``tpm``.
WINDOW = 60.0
# Admissions closer than this share one window entry (later expiry: never lets more through).
_MERGE = 0.01


#: The limits a worker's :class:`Share` divides (``serve``'s ``max_streams`` too).
SHARED_LIMITS = ("rpm", "tpm", "max_streams", "budget_tokens")


class Share(NamedTuple):
    """Worker ``slot`` of ``workers``' part of each limit, when no counter is shared.

    ``serve --workers N`` without ``limits_url``: the workers share no memory,
    and the kernel, not the key, picks the worker of each connection. Each
    worker then enforces ``limit // workers``, the first ``limit % workers``
    workers one more, so the parts add up to the limit exactly: N workers
    never admit more than the key allows. A limit smaller than ``workers``
    leaves some workers a share of 0, which refuses there (with a message
    naming the fix: Redis counters, or a larger limit) rather than admit
    more than the limit.
    """

    slot: int
    workers: int

    def of(self, limit: int) -> int:
        base, extra = divmod(limit, self.workers)
        return base + (1 if self.slot < extra else 0)

    def policy(self, policy: KeyPolicy) -> KeyPolicy:
        """``policy`` with each of its :data:`SHARED_LIMITS` cut to this worker's part."""
        changes = {}
        for name in SHARED_LIMITS:
            limit = getattr(policy, name)
            if limit is not None:
                changes[name] = self.of(limit)
        return msgspec.structs.replace(policy, **changes) if changes else policy

    def empty(self, policy: KeyPolicy) -> str | None:
        """The first limit ``policy`` sets whose part here is 0 (None: every part is 1+)."""
        for name in SHARED_LIMITS:
            limit = getattr(policy, name)
            if limit is not None and self.of(limit) == 0:
                return name
        return None


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The UTC calendar ``period`` (day, week from Monday, month) holding ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        start -= timedelta(days=start.weekday())
        end = start + timedelta(days=7)
    else:
        start = start.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    return start.timestamp(), end.timestamp()


def rate_headers(
    policy: KeyPolicy,
    *,
    requests: int,
    requests_reset: float,
    tokens: int,
    tokens_reset: float,
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits ``policy`` sets (used counts given)."""
    headers: dict[str, str] = {}
    if policy.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(policy.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, policy.rpm - requests))
        headers["x-ratelimit-reset-requests"] = duration(requests_reset)
    if policy.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(policy.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, policy.tpm - tokens))
        headers["x-ratelimit-reset-tokens"] = duration(tokens_reset)
    return headers


class Admission:
    """A request's share of its key's limits, held until :meth:`release`.

    ``headers`` are the rate-limit headers of the response. ``release`` is
    idempotent and synchronous (a stream's end calls it from a ``finally``);
    a limiter that must do I/O schedules it.
    """

    __slots__ = ("_release", "headers", "reserved")

    def __init__(
        self,
        reserved: int,
        headers: dict[str, str],
        release: Callable[[int], None] | None = None,
    ) -> None:
        #: Tokens reserved (prompt estimate + max_tokens).
        self.reserved = reserved
        self.headers = headers
        self._release = release

    def release(self, tokens: int | None = None) -> None:
        """Give the share back; ``tokens`` were really used (``None``: none known, 0)."""
        release, self._release = self._release, None
        if release is not None:
            release(0 if tokens is None else tokens)


class Limiter(Protocol):
    """Where a key's counters live (this process, or Redis)."""

    async def admit(self, key_id: str, policy: KeyPolicy, reserve: int) -> Admission:
        """Take ``reserve`` tokens and one request and one stream, or raise 429."""
        ...

    async def usage(self, key_id: str, policy: KeyPolicy) -> dict[str, int | None]:
        """What a key has used of its limits now (``GET /v1/key``)."""
        ...

    async def aclose(self) -> None: ...


class _Window:
    """A sliding window of (time, amount) entries, oldest first."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[list[float]] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - WINDOW:
            self.total -= int(entries.popleft()[1])

    def add(self, now: float, amount: int) -> None:
        if amount <= 0:
            return
        entries = self.entries
        if entries and now - entries[-1][0] < _MERGE:
            entries[-1][0] = now
            entries[-1][1] += amount
        else:
            entries.append([now, amount])
        self.total += amount

    def until_freed(self, now: float, need: int) -> float | None:
        """Seconds until ``need`` of the amount has expired, or None if it never will."""
        freed = 0
        for at, amount in self.entries:
            freed += int(amount)
            if freed >= need:
                return at + WINDOW - now
        return None

    def reset(self, now: float) -> float:
        """Seconds until the window is empty."""
        return self.entries[-1][0] + WINDOW - now if self.entries else 0.0


class _Counters:
    """One key's counters in this process."""

    __slots__ = (
        "budget_end",
        "budget_start",
        "budget_held",
        "budget_spent",
        "held",
        "requests",
        "streams",
        "tokens",
    )

    def __init__(self) -> None:
        self.requests = _Window()
        self.tokens = _Window()
        #: Tokens reserved by running generations.
        self.held = 0
        self.streams = 0
        self.budget_start = 0.0
        self.budget_end = 0.0
        self.budget_spent = 0
        self.budget_held = 0


def _headers(policy: KeyPolicy, counters: _Counters, now: float) -> dict[str, str]:
    """The key's ``x-ratelimit-*`` headers now (a token reservation resets when it ends)."""
    requests, tokens = counters.requests, counters.tokens
    return rate_headers(
        policy,
        requests=requests.total,
        requests_reset=requests.reset(now),
        tokens=tokens.total + counters.held,
        tokens_reset=max(tokens.reset(now), WINDOW if counters.held else 0.0),
    )


def too_large(reserve: int, limit: int, what: str) -> RateLimited:
    error = RateLimited(
        f"request too large: it may use {reserve} tokens (prompt estimate + max_tokens), "
        f"more than this key's {what} of {limit}; lower max_tokens or shorten the prompt"
    )
    error.retry = False
    return error


class LocalLimiter:
    """Every key's counters, in this process (see the module docstring).

    ``spent(key_id, period_start, tokens)`` is told each generation's real
    usage against a budget, so the budget outlives a restart (the key store
    persists it); ``load_spent`` seeds a key's spending when it is first seen.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        spent: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _Counters] = {}
        self._spent = spent
        #: Spending loaded from the key store: (key id, period start) -> tokens.
        self.seed: dict[tuple[str, float], int] = {}

    async def admit(self, key_id: str, policy: KeyPolicy, reserve: int) -> Admission:
        return self.admit_now(key_id, policy, reserve)

    def admit_now(self, key_id: str, policy: KeyPolicy, reserve: int) -> Admission:
        """:meth:`admit`, synchronously: check every limit, then take the shares."""
        counters = self._keys.get(key_id)
        if counters is None:
            counters = self._keys[key_id] = _Counters()
        now = self._clock()
        requests, tokens = counters.requests, counters.tokens
        requests.expire(now)
        tokens.expire(now)
        try:
            self._check(key_id, counters, policy, reserve, now)
        except RateLimited as exc:
            exc.headers = _headers(policy, counters, now)
            raise
        # Admitted: take every share at once.
        requests.add(now, 1)
        counters.held += reserve
        counters.streams += 1
        budgeted = policy.budget_tokens is not None
        if budgeted:
            counters.budget_held += reserve
        budget_end = counters.budget_end
        headers = _headers(policy, counters, now)

        def release(used: int) -> None:
            counters.held -= reserve
            counters.streams -= 1
            tokens.add(self._clock(), used)
            if budgeted:
                if counters.budget_end == budget_end:
                    counters.budget_held -= reserve
                self._charge(key_id, counters, policy, used)

        return Admission(reserve, headers, release)

    def _check(
        self, key_id: str, counters: _Counters, policy: KeyPolicy, reserve: int, now: float
    ) -> None:
        """Raise the 429 of the first limit ``reserve`` more would break."""
        requests, tokens = counters.requests, counters.tokens
        if policy.max_streams is not None and counters.streams >= policy.max_streams:
            raise RateLimited(
                f"this key already runs {counters.streams} generations, its limit "
                f"(max_streams {policy.max_streams}); retry when one ends",
                retry_after=1.0,
            )
        if policy.rpm is not None and requests.total >= policy.rpm:
            wait = requests.until_freed(now, requests.total - policy.rpm + 1)
            raise RateLimited(
                f"rate limit reached: {policy.rpm} requests per minute",
                retry_after=wait if wait is not None else 1.0,
            )
        if policy.tpm is not None:
            if reserve > policy.tpm:
                raise too_large(reserve, policy.tpm, "tokens per minute")
            over = tokens.total + counters.held + reserve - policy.tpm
            if over > 0:
                wait = tokens.until_freed(now, over)
                raise RateLimited(
                    f"rate limit reached: {policy.tpm} tokens per minute (this request "
                    f"reserves {reserve}: its prompt estimate and max_tokens)",
                    retry_after=wait if wait is not None else 1.0,
                )
        if policy.budget_tokens is not None:
            self._check_budget(key_id, counters, policy, reserve)

    def _check_budget(
        self, key_id: str, counters: _Counters, policy: KeyPolicy, reserve: int
    ) -> None:
        assert policy.budget_tokens is not None
        wall = self._wall()
        self._roll(key_id, counters, policy, wall)
        used = counters.budget_spent + counters.budget_held
        if used + reserve > policy.budget_tokens:
            error = QuotaExceeded(
                f"this key's budget of {policy.budget_tokens} tokens a {policy.budget_period} "
                f"is spent ({used} used or reserved, this request reserves {reserve}); "
                "it renews at the start of the next period (UTC)",
                retry_after=counters.budget_end - wall,
            )
            error.retry = False
            raise error

    def _roll(self, key_id: str, counters: _Counters, policy: KeyPolicy, wall: float) -> None:
        """Start the budget period holding ``wall`` if the key's has ended."""
        if wall >= counters.budget_end:
            start, end = period_bounds(policy.budget_period, wall)
            counters.budget_start, counters.budget_end = start, end
            counters.budget_spent = self.seed.pop((key_id, start), 0)
            counters.budget_held = 0

    def _charge(self, key_id: str, counters: _Counters, policy: KeyPolicy, used: int) -> None:
        # A new period that began while it ran: it counts there (never refused here).
        self._roll(key_id, counters, policy, self._wall())
        counters.budget_spent += used
        if self._spent is not None and used:
            self._spent(key_id, counters.budget_start, used)

    async def usage(self, key_id: str, policy: KeyPolicy) -> dict[str, int | None]:
        return self.usage_now(key_id, policy)

    def usage_now(self, key_id: str, policy: KeyPolicy) -> dict[str, int | None]:
        """What a key has used of its limits now (``GET /v1/key``)."""
        counters = self._keys.get(key_id) or _Counters()
        now = self._clock()
        counters.requests.expire(now)
        counters.tokens.expire(now)
        tokens = counters.tokens.total + counters.held
        budget_used = counters.budget_spent + counters.budget_held
        if policy.budget_tokens is not None and self._wall() >= counters.budget_end:
            start, _ = period_bounds(policy.budget_period, self._wall())
            budget_used = self.seed.get((key_id, start), 0)
        return {
            "requests_in_window": counters.requests.total,
            "tokens_in_window": tokens,
            "streams": counters.streams,
            "budget_used": budget_used if policy.budget_tokens is not None else None,
        }

    def forget(self, key_id: str) -> None:
        """Drop a deleted key's counters (running generations still release into them)."""
        self._keys.pop(key_id, None)

    async def aclose(self) -> None:
        return None
