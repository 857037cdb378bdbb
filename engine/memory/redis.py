"""``redis://host:port/db`` (and ``rediss://``): redis-py's asyncio client.

Needs the ``[redis]`` extra. Each conversation is one Redis list of
msgspec-JSON messages, plus a hash from message id to list position for
de-duplication. Both keys share a hash tag (``{...}``), so they live in one slot
and one Lua script can touch both on Redis Cluster too. Every write runs as a
single Lua script: atomic, one round trip, and it refreshes the TTL of both keys
so a conversation expires ``ttl`` seconds after its last write.

There is no schema to migrate: a message is its :class:`StoredMessage` JSON,
and one written before ``tool_calls``, ``tool_call_id`` and ``parts`` existed
lacks those keys and decodes with them None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from .base import (
    DEFAULT_TTL,
    MemoryStore,
    StoredMessage,
    message_decoder,
    message_encoder,
    redact_url,
    translate_errors,
)

__all__ = ["KEY_PREFIX", "RedisStore"]

#: Every key this store writes starts with this, so the data is easy to find
#: (``SCAN MATCH sse-engine:memory:*``) in a shared Redis.
KEY_PREFIX: Final = "sse-engine:memory:"

#: Seconds to connect and to wait for a reply before the store counts as down.
#: Short, because a request is waiting: redis-py's default is 5 as well.
TIMEOUT: Final = 5.0

#: Connections per store. Each memory call is one short round trip and Redis
#: runs commands one at a time, so a few connections serve hundreds of streams;
#: more calls than this wait (up to TIMEOUT) for a free one.
POOL_SIZE: Final = 20

#: Retries of a command after a connection error or timeout. One or two absorb
#: a pooled connection gone stale (Redis restarted, idle connection dropped);
#: redis-py's default of 10 with backoff would hold a request for seconds
#: before it could answer 503.
RETRIES: Final = 2

_ERRORS: Final = (RedisError, OSError, TimeoutError)

# KEYS: messages list, ids hash. ARGV: ttl, then (message_id, json) pairs.
# Returns one entry per pair: nil when the message was added as given, or the
# stored JSON when its id was already there (or earlier in this batch).
# Positions are stable because the list is only ever appended to or deleted.
_APPEND: Final = """
local out = {}
for i = 2, #ARGV, 2 do
  local index = redis.call('HGET', KEYS[2], ARGV[i])
  if index then
    out[#out + 1] = redis.call('LINDEX', KEYS[1], index)
  else
    local length = redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], length - 1)
    out[#out + 1] = false
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return out
"""

_DELETE: Final = """
local length = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return length
"""


def _keys(parent: str, parent_id: str) -> list[str]:
    # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
    tag = f"{KEY_PREFIX}{{{len(parent)}:{parent}:{parent_id}}}"
    return [f"{tag}:messages", f"{tag}:ids"]


class RedisStore(MemoryStore):
    """A :class:`MemoryStore` in Redis. Open it with :meth:`open`."""

    def __init__(self, client: aioredis.Redis, url: str, *, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(ttl=ttl)
        self._client = client
        self._url = redact_url(url)
        self._append_script = client.register_script(_APPEND)
        self._delete_script = client.register_script(_DELETE)

    @classmethod
    async def open(cls, url: str, *, ttl: int = DEFAULT_TTL) -> RedisStore:
        """Connect to ``url`` and check that the server answers.

        Raises :class:`StoreUnavailable` if it does not.
        """
        # A blocking pool makes a burst of requests queue for a connection;
        # redis-py's default pool raises "Too many connections" instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            socket_timeout=TIMEOUT,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), RETRIES),
        )
        client = aioredis.Redis.from_pool(pool)  # the client owns and closes the pool
        store = cls(client, url, ttl=ttl)
        try:
            await store.ping()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def ping(self) -> None:
        self._check_open()
        with translate_errors(_ERRORS, "answer a ping", self._url):
            await self._client.ping()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with translate_errors(_ERRORS, "close", self._url):
            await self._client.aclose()

    async def _append(
        self, parent: str, parent_id: str, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        self._check_open()
        args: list[str | bytes | int] = [self.ttl]
        for message in messages:
            args += (message.message_id, message_encoder.encode(message))
        with translate_errors(_ERRORS, "store messages", self._url):
            found = await self._append_script(keys=_keys(parent, parent_id), args=args)
        return [
            message if data is None else message_decoder.decode(data)
            for message, data in zip(messages, found, strict=True)
        ]

    async def _read(self, parent: str, parent_id: str, limit: int | None) -> list[StoredMessage]:
        self._check_open()
        key = _keys(parent, parent_id)[0]
        with translate_errors(_ERRORS, "read messages", self._url):
            items = await self._client.lrange(key, 0 if limit is None else -limit, -1)
        return [message_decoder.decode(data) for data in items]

    async def _delete(self, parent: str, parent_id: str) -> int:
        self._check_open()
        with translate_errors(_ERRORS, "clear messages", self._url):
            count = await self._delete_script(keys=_keys(parent, parent_id))
        return int(count)
