"""Per-key limits shared by every worker and box: :class:`RedisLimiter`.

The same rules as :class:`~engine.limits.LocalLimiter` (read its module
docstring: a 60 s sliding window for ``rpm`` and ``tpm``, ``max_tokens``
reserved at admission and replaced by the real usage at the end, running
generations for ``max_streams``, a UTC calendar budget), with the counters in
Redis, so a limit holds across ``--workers`` and boxes. Needs the ``[redis]``
extra and Redis 5 or later.

Exact across processes
    One admission is one Lua script: every check and every take, with nothing
    in between, so a thousand requests racing for a key's last unit from any
    number of gateways admit exactly the limit. The end of a generation is
    another script (its reservation and stream slot given back, its real usage
    into the tokens window and the budget). redis-py's ``register_script``
    sends ``EVALSHA`` and loads the script when the server lacks it (after a
    restart or ``SCRIPT FLUSH``). Both scripts are idempotent, so a retry after
    a lost reply takes or gives nothing twice.

One clock
    The scripts read Redis's ``TIME``: gateways whose clocks disagree still
    agree on the window, the leases and the budget period (computed in Lua
    from that time, as :func:`~engine.limits.period_bounds` does).

Crash safety
    A generation's reservation, stream slot and budget hold are a *lease* in a
    sorted set, scored by when it lapses (``lease`` seconds on). A task renews
    this process's live leases every ``renew`` seconds; each admission first
    gives back the leases that lapsed, so what a dead process held is free
    again within ``lease`` seconds, never leaked. An admission whose reply
    never arrived (the request was cancelled) is the same: nobody renews it.

Per key, six keys share a hash tag (``sse-engine:limits:{<key id>}:...``)
and expire when idle (the budget at the end of its period): ``requests``
(sorted set of lease ids by admission time), ``tokens`` (``"<n>:<lease id>"``
by end time), ``leases`` (lease ids by expiry), ``lease-data`` (lease id ->
``"<reserve>|<budget period end>"``), ``state`` (``tokens``: the sum of the
tokens window; ``held``: the live reservations) and ``budget`` (``start``,
``end``, ``spent``, ``held``).

Failing closed
    If Redis cannot be reached, :meth:`RedisLimiter.admit` raises
    :class:`~engine.errors.StoreUnavailable` (503 with its message): a limiter
    that cannot count must not admit. Failing open would drop every limit at
    once, across every gateway, for as long as Redis is away, which is when
    a runaway client or an attacker meets no limit at all and a budget (the
    operator's money) stops holding; a 503 is retried by the SDKs and shows
    the outage. A release that fails is logged: its lease lapses by itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from .errors import InvalidFields, QuotaExceeded, RateLimited, StoreUnavailable
from .keys import KeyPolicy
from .keystore_redis import ERRORS, connect
from .limits import WINDOW, Admission, period_bounds, rate_headers, too_large
from .memory.base import redact_url, translate_errors

__all__ = ["KEY_PREFIX", "LEASE", "RedisLimiter", "open_limiter"]

log = logging.getLogger("engine.limits")

#: What every key the limiter writes starts with.
KEY_PREFIX: Final = "sse-engine:limits:"

#: Seconds a generation's share stays held unless renewed: how long what a
#: crashed process held stays taken. Long enough to ride out a stalled event
#: loop or a Redis fail-over, short beside the 60 s window it protects.
LEASE: Final = 30.0

#: Seconds a budget's counters outlive their period, so a generation that ran
#: across its end still finds them to give its hold back.
BUDGET_MARGIN: Final = 3600.0

#: Seconds the per-key keys outlive the window and the leases, when idle.
_TTL_MARGIN: Final = 5.0

_KEYS: Final = ("requests", "tokens", "leases", "lease-data", "state", "budget")

# Shared by the scripts. KEYS as in _KEYS (1 to 6). Numbers go back to Python
# as strings (a Lua number in a reply is cut to an integer) written with 17
# digits, so they round-trip exactly.
_PRELUDE: Final = (
    f"local WINDOW = {WINDOW!r}\nlocal BUDGET_MARGIN = {BUDGET_MARGIN!r}\n"
    + r"""
local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x) return string.format('%.17g', x) end

-- The UTC calendar period holding `now`, as engine.limits.period_bounds:
-- a day, a week from Monday, a month (Howard Hinnant's civil_from_days).
local function bounds(period, now)
  local day = math.floor(now / 86400)
  if period == 'day' then return day * 86400, (day + 1) * 86400 end
  if period == 'week' then
    local monday = day - (day + 3) % 7  -- 1970-01-01 was a Thursday
    return monday * 86400, (monday + 7) * 86400
  end
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local mday = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local length = 31
  if month == 2 then
    local leap = year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)
    length = leap and 29 or 28
  elseif month == 4 or month == 6 or month == 9 or month == 11 then
    length = 30
  end
  local first = day - (mday - 1)
  return first * 86400, (first + length) * 86400
end

-- Give a lease's shares back: its reservation, its stream slot, its budget
-- hold (only if the budget is still in the period it was taken from).
local function drop(id)
  local data = redis.call('HGET', KEYS[4], id)
  if not data then return end
  local reserve, ends = string.match(data, '^(-?%d+)|(.*)$')
  -- 0 - n, not -n: -0 would be sent as "-0", which HINCRBY refuses.
  local back = 0 - tonumber(reserve)
  redis.call('HINCRBY', KEYS[5], 'held', back)
  if ends ~= '' and redis.call('HGET', KEYS[6], 'end') == ends then
    redis.call('HINCRBY', KEYS[6], 'held', back)
  end
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[3], id)
end

-- A new budget period once the last one has ended (LocalLimiter's budget_end),
-- its spending seeded from the key store when the caller knows it.
local function rollover(period, now, seed_start, seed_tokens)
  local ends = redis.call('HGET', KEYS[6], 'end')
  if ends and now < tonumber(ends) then return end
  local start, finish = bounds(period, now)
  local seed = 0
  if seed_start ~= '' and tonumber(seed_start) == start then seed = tonumber(seed_tokens) end
  redis.call('HSET', KEYS[6], 'start', fmt(start), 'end', fmt(finish), 'spent', seed, 'held', 0)
end

-- Idle keys vanish: the window's and the leases' after `ttl` ms, the budget's
-- a margin after its period ends.
local function keep(ttl, now)
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ttl) end
  local ends = redis.call('HGET', KEYS[6], 'end')
  if ends then
    redis.call('PEXPIRE', KEYS[6], math.ceil((tonumber(ends) - now + BUDGET_MARGIN) * 1000))
  end
end

local function amount(member) return tonumber(string.match(member, '^(-?%d+):')) end
"""
)

# ARGV: now ('' for TIME), lease id, reserve, lease seconds, ttl ms, then the
# limits max_streams, rpm, tpm, budget_tokens ('' when unset), budget period,
# seed period start ('' when none), seed tokens.
# Returns {code, detail, detail, requests, requests reset, tokens, tokens reset}:
# the last four the key's counters for its x-ratelimit-* headers (a refusal
# carries them too), the code 0 when admitted, else 1 (max_streams: streams),
# 2 (rpm: retry), 3 (tpm: too large), 4 (tpm: retry or '') or 5 (budget: used,
# retry). Checks in LocalLimiter's order.
_ADMIT: Final = (
    _PRELUDE
    + r"""
local now = clock(ARGV[1])
local id, reserve, lease, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local max_streams, rpm = tonumber(ARGV[6]), tonumber(ARGV[7])
local tpm, budget = tonumber(ARGV[8]), tonumber(ARGV[9])
local tokens, held  -- the tokens window's sum, the running generations' reservations

-- The code and details of the reply; the shares taken when admitted.
local function admit()
  for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do drop(lapsed) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  local state = redis.call('HMGET', KEYS[5], 'tokens', 'held')
  tokens = tonumber(state[1] or '0')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - WINDOW)) do
    tokens = tokens - amount(member)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - WINDOW)
  if redis.call('EXISTS', KEYS[2]) == 0 then tokens = 0 end
  tokens = math.max(0, tokens)
  held = math.max(0, tonumber(state[2] or '0'))
  redis.call('HSET', KEYS[5], 'tokens', tokens, 'held', held)

  -- A retry of an admission that was taken (its reply was lost): take nothing twice.
  if redis.call('HEXISTS', KEYS[4], id) == 0 then
    local streams = redis.call('ZCARD', KEYS[3])
    if max_streams and streams >= max_streams then return 1, streams end
    local requests = redis.call('ZCARD', KEYS[1])
    if rpm and requests >= rpm then
      -- The admission whose expiry brings the count under the limit.
      local at = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
      return 2, fmt(tonumber(at[2]) + WINDOW - now)
    end
    if tpm then
      if reserve > tpm then return 3 end
      local over = tokens + held + reserve - tpm
      if over > 0 then
        local freed = 0
        local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
        for i = 1, #entries, 2 do
          freed = freed + amount(entries[i])
          if freed >= over then return 4, fmt(tonumber(entries[i + 1]) + WINDOW - now) end
        end
        return 4, ''  -- only running generations hold it: nobody knows when they end
      end
    end
    local ends = ''
    if budget then
      rollover(ARGV[10], now, ARGV[11], ARGV[12])
      local b = redis.call('HMGET', KEYS[6], 'spent', 'held', 'end')
      local used = tonumber(b[1]) + tonumber(b[2])
      if used + reserve > budget then return 5, used, fmt(tonumber(b[3]) - now) end
      ends = b[3]
    end
    -- Admitted: take every share at once.
    if budget then redis.call('HINCRBY', KEYS[6], 'held', reserve) end
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('ZADD', KEYS[3], now + lease, id)
    redis.call('HSET', KEYS[4], id, ARGV[3] .. '|' .. ends)
    held = held + reserve
    redis.call('HSET', KEYS[5], 'held', held)
  end
  return 0
end

local code, first, second = admit()
keep(ttl, now)  -- refused or not: a key with no TTL would outlive its use
local reset = 0
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #newest > 0 then reset = tonumber(newest[2]) + WINDOW - now end
if held > 0 then reset = math.max(reset, WINDOW) end
local requests_reset = 0
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then requests_reset = tonumber(last[2]) + WINDOW - now end
return {code, first or '', second or '', redis.call('ZCARD', KEYS[1]), fmt(requests_reset),
        tokens + held, fmt(reset)}
"""
)

# ARGV: now, lease id, tokens used, ttl ms, budget period ('' when the
# admission had no budget), seed period start, seed tokens. Returns the start
# of the budget period the usage was charged to ('' without a budget).
_RELEASE: Final = (
    _PRELUDE
    + r"""
local now = clock(ARGV[1])
local id, used = ARGV[2], tonumber(ARGV[3])
drop(id)
-- ZADD answers 0 for a member already there: a retried release counts once.
local counted = used > 0 and redis.call('ZADD', KEYS[2], now, ARGV[3] .. ':' .. id) == 1
if counted then redis.call('HINCRBY', KEYS[5], 'tokens', used) end
local start = ''
if ARGV[5] ~= '' then
  rollover(ARGV[5], now, ARGV[6], ARGV[7])
  if counted then redis.call('HINCRBY', KEYS[6], 'spent', used) end
  start = redis.call('HGET', KEYS[6], 'start')  -- the period it counted in
end
keep(ARGV[4], now)
return start
"""
)

# ARGV: now, budget period ('' without a budget), seed period start, seed
# tokens. Reads only (what lapsed is left for the next admission to drop):
# returns {requests in the window, tokens used in it plus the live leases'
# reservations, live leases, budget used and held ('' without a budget)}, as
# LocalLimiter.usage_now counts them.
_USAGE: Final = (
    _PRELUDE
    + r"""
local now = clock(ARGV[1])
local requests = redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now - WINDOW), '+inf')
local tokens = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. fmt(now - WINDOW), '+inf')) do
  tokens = tokens + amount(member)
end
local ends = redis.call('HGET', KEYS[6], 'end')
local current = ends and now < tonumber(ends)
local held, budget_held, streams = 0, 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. fmt(now), '+inf')) do
  local data = redis.call('HGET', KEYS[4], id)
  if data then
    local reserve, until_ = string.match(data, '^(-?%d+)|(.*)$')
    streams = streams + 1
    held = held + tonumber(reserve)
    if current and until_ == ends then budget_held = budget_held + tonumber(reserve) end
  end
end
local budget = ''
if ARGV[2] ~= '' then
  if current then
    budget = tonumber(redis.call('HGET', KEYS[6], 'spent') or '0') + budget_held
  else
    local start = bounds(ARGV[2], now)
    budget = 0
    if ARGV[3] ~= '' and tonumber(ARGV[3]) == start then budget = tonumber(ARGV[4]) end
  end
end
return {requests, tokens + held, streams, budget}
"""
)

# ARGV: now, lease seconds, ttl ms, then lease ids. Extends the leases still
# held (one given back meanwhile is not brought back); returns how many.
_RENEW: Final = (
    _PRELUDE
    + r"""
local now = clock(ARGV[1])
local renewed = 0
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[i])
    renewed = renewed + 1
  end
end
keep(ARGV[3], now)
return renewed
"""
)


def _limit(value: int | None) -> int | str:
    return "" if value is None else value


class RedisLimiter:
    """Every key's counters, in Redis (see the module docstring). Open with :func:`open_limiter`.

    ``lease`` and ``renew`` are the seconds a generation's share stays held
    without renewal and between renewals (a third of ``lease`` by default:
    two renewals may fail before a live lease lapses). ``clock`` replaces
    Redis's ``TIME`` (unix seconds; for tests). ``spent`` and ``seed`` are
    :class:`~engine.limits.LocalLimiter`'s: told each generation's real usage
    against a budget, and the key store's spending, used when a budget's
    counters are started (Redis lost them, or a new period begins).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        url: str = "",
        *,
        prefix: str = KEY_PREFIX,
        lease: float = LEASE,
        renew: float | None = None,
        clock: Callable[[], float] | None = None,
        spent: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self._client = client
        self._url = redact_url(url)
        self._prefix = prefix
        self._lease = float(lease)
        self._renew_every = self._lease / 3 if renew is None else renew
        self._ttl_ms = math.ceil((max(WINDOW, self._lease) + _TTL_MARGIN) * 1000)
        self._clock = clock
        self._spent = spent
        #: Spending loaded from the key store: (key id, period start) -> tokens.
        self.seed: dict[tuple[str, float], int] = {}
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._usage = client.register_script(_USAGE)
        #: This process's running generations: lease id -> key id.
        self._live: dict[str, str] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    def keys(self, key_id: str) -> list[str]:
        """The Redis keys holding ``key_id``'s counters."""
        tag = f"{self._prefix}{{{key_id}}}"
        return [f"{tag}:{name}" for name in _KEYS]

    def _now(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))

    def _seed(self, key_id: str, policy: KeyPolicy) -> list[str | int]:
        """The key store's spending in the current budget period, if known: [start, tokens]."""
        if self.seed and policy.budget_tokens is not None:
            wall = time.time() if self._clock is None else self._clock()
            start, _ = period_bounds(policy.budget_period, wall)
            tokens = self.seed.get((key_id, start))
            if tokens is not None:
                return [repr(start), tokens]
        return ["", 0]

    async def admit(self, key_id: str, policy: KeyPolicy, reserve: int) -> Admission:
        """Take ``reserve`` tokens, one request and one stream of ``key_id``'s limits.

        Raises :class:`~engine.errors.RateLimited` or
        :class:`~engine.errors.QuotaExceeded` (429s, as
        :class:`~engine.limits.LocalLimiter` does), and
        :class:`~engine.errors.StoreUnavailable` if Redis cannot be reached.
        """
        if self._closed:
            raise StoreUnavailable("the rate limiter is closed")
        lease_id = secrets.token_hex(12)
        args: list[str | int | float] = [
            self._now(),
            lease_id,
            reserve,
            repr(self._lease),
            self._ttl_ms,
            _limit(policy.max_streams),
            _limit(policy.rpm),
            _limit(policy.tpm),
            _limit(policy.budget_tokens),
            policy.budget_period,
            *self._seed(key_id, policy),
        ]
        keys = self.keys(key_id)
        with translate_errors(ERRORS, "count a request against its key's limits", self._url):
            reply = await self._admit(keys=keys, args=args)
        headers = rate_headers(
            policy,
            requests=int(reply[3]),
            requests_reset=float(reply[4]),
            tokens=int(reply[5]),
            tokens_reset=float(reply[6]),
        )
        if int(reply[0]):
            error = _refusal(reply, policy, reserve)
            error.headers = headers
            raise error
        self._live[lease_id] = key_id
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

        def release(used: int) -> None:
            self._live.pop(lease_id, None)
            if self._closed:
                return  # the lease lapses by itself
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to run it on (a finaliser at exit): it lapses
                return
            task = loop.create_task(self._give_back(keys, key_id, lease_id, policy, used))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

        return Admission(reserve, headers, release)

    async def _give_back(
        self, keys: list[str], key_id: str, lease_id: str, policy: KeyPolicy, used: int
    ) -> None:
        budget = policy.budget_tokens is not None
        args: list[str | int] = [
            self._now(),
            lease_id,
            used,
            self._ttl_ms,
            policy.budget_period if budget else "",
            *self._seed(key_id, policy),
        ]
        try:
            with translate_errors(ERRORS, "give a generation's share back", self._url):
                start = await self._release(keys=keys, args=args)
        except StoreUnavailable as exc:
            log.warning(
                "key %s: %s (its share lapses within %g s)", key_id, exc.message, self._lease
            )
            return
        if budget and used and self._spent is not None:
            self._spent(key_id, float(start), used)

    async def usage(self, key_id: str, policy: KeyPolicy) -> dict[str, int | None]:
        """What ``key_id`` has used of its limits now, across every gateway (``GET /v1/key``)."""
        budget = policy.budget_tokens is not None
        args = [self._now(), policy.budget_period if budget else "", *self._seed(key_id, policy)]
        with translate_errors(ERRORS, "read a key's usage of its limits", self._url):
            reply = await self._usage(keys=self.keys(key_id), args=args)
        return {
            "requests_in_window": int(reply[0]),
            "tokens_in_window": int(reply[1]),
            "streams": int(reply[2]),
            "budget_used": int(reply[3]) if budget else None,
        }

    async def renew(self) -> int:
        """Extend the leases of this process's running generations; how many were still held.

        Raises :class:`~engine.errors.StoreUnavailable` if Redis cannot be reached.
        """
        by_key: dict[str, list[str]] = {}
        for lease_id, key_id in self._live.items():
            by_key.setdefault(key_id, []).append(lease_id)
        if not by_key:
            return 0
        now, lease = self._now(), repr(self._lease)
        with translate_errors(ERRORS, "renew the leases of running generations", self._url):
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id, leases in by_key.items():
                    args: list[str | int] = [now, lease, self._ttl_ms, *leases]
                    await self._renew(keys=self.keys(key_id), args=args, client=pipe)
                replies = await pipe.execute()
        return sum(int(reply) for reply in replies)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                await self.renew()
            except StoreUnavailable as exc:
                log.warning("%s (they lapse %g s after the last renewal)", exc.message, self._lease)

    async def flush(self) -> None:
        """Wait until the releases made so far have reached Redis (or failed, logged)."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop renewing, wait for the releases under way, and close the client."""
        if self._closed:
            return
        self._closed = True
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            try:
                await renewer
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        await self.flush()
        with translate_errors(ERRORS, "close", self._url):
            await self._client.aclose()


def _refusal(reply: list[object], policy: KeyPolicy, reserve: int) -> RateLimited:
    """The 429 a refusing admission script's reply means (LocalLimiter's words)."""
    code = int(str(reply[0]))
    if code == 1:
        return RateLimited(
            f"this key already runs {reply[1]} generations, its limit "
            f"(max_streams {policy.max_streams}); retry when one ends",
            retry_after=1.0,
        )
    if code == 2:
        return RateLimited(
            f"rate limit reached: {policy.rpm} requests per minute",
            retry_after=float(_text(reply[1])),
        )
    if code == 3:
        assert policy.tpm is not None
        return too_large(reserve, policy.tpm, "tokens per minute")
    if code == 4:
        wait = _text(reply[1])
        return RateLimited(
            f"rate limit reached: {policy.tpm} tokens per minute (this request "
            f"reserves {reserve}: its prompt estimate and max_tokens)",
            retry_after=float(wait) if wait else 1.0,
        )
    error = QuotaExceeded(
        f"this key's budget of {policy.budget_tokens} tokens a {policy.budget_period} "
        f"is spent ({reply[1]} used or reserved, this request reserves {reserve}); "
        "it renews at the start of the next period (UTC)",
        retry_after=float(_text(reply[2])),
    )
    error.retry = False
    return error


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def open_limiter(
    url: str,
    *,
    prefix: str = KEY_PREFIX,
    lease: float = LEASE,
    spent: Callable[[str, float, int], None] | None = None,
) -> RedisLimiter:
    """A :class:`RedisLimiter` on the Redis at ``url``; the caller must ``aclose()`` it.

    Raises :class:`~engine.errors.InvalidFields` for a URL that is not
    ``redis://`` or ``rediss://``, and :class:`~engine.errors.StoreUnavailable`
    if the server does not answer (the message never shows the password).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise InvalidFields(
            f"limits_url must be redis://host:port/db or rediss://..., not {redact_url(url)!r}"
        )
    client = connect(url)
    limiter = RedisLimiter(client, url, prefix=prefix, lease=lease, spent=spent)
    try:
        with translate_errors(ERRORS, "answer a ping", limiter._url):
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return limiter
