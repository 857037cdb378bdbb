"""Client keys in Redis (``redis://``, ``rediss://``), through redis-py's asyncio client.

Needs the ``[redis]`` extra. Two hashes, neither with a TTL (keys and budgets
must outlive any idle time):

- ``sse-engine:keys``: key id -> its :class:`~engine.keys.ClientKey` JSON (the
  hash of its secret, never the secret);
- ``sse-engine:key-spend``: ``"<key id>|<period start>"`` -> tokens spent in
  that budget period, added to with ``HINCRBY``, atomic however many gateways
  add at once.

Deleting a key removes its spending in the same Lua script. ``prefix``
replaces ``sse-engine:`` (the tests give each run its own). The two hashes
are separate keys, so the delete script needs them in one node: plain Redis
or a single primary, as :func:`connect` gives (it makes no cluster client).
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from .keys import ClientKey

# The key store's own codec: every backend writes the same JSON.
from .keystore import KeyStore, _decode, _encode
from .memory.base import redact_url, translate_errors
from .memory.redis import POOL_SIZE, RETRIES, TIMEOUT

__all__ = ["KEY_PREFIX", "RedisKeys", "connect"]

#: What the two hashes' names start with.
KEY_PREFIX: Final = "sse-engine:"

ERRORS: Final = (RedisError, OSError, TimeoutError)

# KEYS: keys hash, spend hash. ARGV: key id. Removes the key and every
# "<id>|<period>" field of its spending (and not those of a key whose id merely
# starts with "<id>|": a period has no "|"). Returns 1 if the key existed.
_DELETE: Final = """
local found = redis.call('HDEL', KEYS[1], ARGV[1])
local head = ARGV[1] .. '|'
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, #head) == head
      and not string.find(field, '|', #head + 1, true) then
    redis.call('HDEL', KEYS[2], field)
  end
end
return found
"""


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` set up as the memory store's (:mod:`engine.memory.redis`).

    A blocking pool of ``POOL_SIZE`` (a burst queues for a connection rather
    than failing), ``TIMEOUT`` to connect and per reply, ``RETRIES`` retries
    with a short backoff, so a server that is down is a prompt error. The
    client owns its pool: ``aclose()`` the client.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), RETRIES),
    )
    return aioredis.Redis.from_pool(pool)


def _field(key_id: str, period_start: float) -> str:
    return f"{key_id}|{float(period_start)!r}"


class RedisKeys(KeyStore):
    """A :class:`KeyStore` in Redis. Open it with :meth:`open`."""

    def __init__(self, client: aioredis.Redis, url: str, *, prefix: str = KEY_PREFIX) -> None:
        self._client = client
        self._url = redact_url(url)
        self._keys = f"{prefix}keys"
        self._spend = f"{prefix}key-spend"
        self._delete = client.register_script(_DELETE)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, prefix: str = KEY_PREFIX) -> RedisKeys:
        """Connect to ``url`` and check that the server answers.

        Raises :class:`~engine.errors.StoreUnavailable` if it does not (the
        message never shows the URL's password).
        """
        client = connect(url)
        store = cls(client, url, prefix=prefix)
        try:
            with translate_errors(ERRORS, "answer a ping", store._url):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def load(self) -> list[ClientKey]:
        with translate_errors(ERRORS, "load client keys", self._url):
            stored = await self._client.hgetall(self._keys)
        return [_decode(stored[key_id]) for key_id in sorted(stored)]

    async def put(self, key: ClientKey) -> None:
        with translate_errors(ERRORS, "store a client key", self._url):
            await self._client.hset(self._keys, key.id, _encode(key))

    async def delete(self, key_id: str) -> bool:
        with translate_errors(ERRORS, "delete a client key", self._url):
            found = await self._delete(keys=[self._keys, self._spend], args=[key_id])
        return bool(found)

    async def add_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        with translate_errors(ERRORS, "record a key's spending", self._url):
            await self._client.hincrby(self._spend, _field(key_id, period_start), tokens)

    async def spent(self) -> dict[tuple[str, float], int]:
        with translate_errors(ERRORS, "read the keys' spending", self._url):
            stored = await self._client.hgetall(self._spend)
        out: dict[tuple[str, float], int] = {}
        for field, tokens in stored.items():
            text = field.decode() if isinstance(field, bytes) else field
            key_id, _, period = text.rpartition("|")
            out[key_id, float(period)] = int(tokens)
        return out

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with translate_errors(ERRORS, "close", self._url):
            await self._client.aclose()
