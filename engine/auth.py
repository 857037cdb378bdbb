"""Who may use the gateway, and how much: :class:`Gatekeeper`. No aiohttp here.

The middleware asks :meth:`Gatekeeper.authenticate` who a request is (from
its headers and query, before its route runs); a route that starts a
generation asks :meth:`Gatekeeper.admit` for its key's share of the limits.
The admin API changes keys through :meth:`create`, :meth:`update`,
:meth:`rotate` and :meth:`delete`, which persist them in the key store and
refresh the key ring at once (other processes see the change within
``key_refresh`` seconds).

Open or closed: with no key in the config, none stored and no admin key, the
gateway is open (every request is :data:`~engine.keys.ANONYMOUS`, whatever it
sends), which ``serve`` allows only on a loopback address. Otherwise every
route but the probes and the playground page needs a key (or a token minted
from one, or the admin key).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from .config import Config
from .errors import (
    Forbidden,
    InvalidFields,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
)
from .keys import (
    ADMIN,
    ANONYMOUS,
    SHOWN,
    TOKEN_PREFIX,
    ClientKey,
    KeyPolicy,
    KeyRing,
    Principal,
    derive_secret,
    hash_key,
    mint_token,
    new_key,
    new_key_id,
    plausible,
    read_token,
)
from .keystore import KeyStore
from .limits import Admission, Limiter, LocalLimiter, Share, rate_headers

__all__ = ["Gatekeeper", "memory_parent"]

log = logging.getLogger("engine.auth")

#: Seconds a key's budget spending waits to be written, batched with the rest.
SPEND_FLUSH = 1.0

#: Query parameters that look like a key: refused by name, never read.
_KEY_PARAMS = ("key", "api_key", "apikey", "api-key", "access_token")


def memory_parent(principal: Principal, parent: str) -> str:
    """The parent a conversation is stored under: private to its key unless shared.

    ``key_…/ChatSession``: a key never sees another key's conversation under
    the same name, and nothing in the stores changes. The admin and an open
    gateway use the name as given.
    """
    key = principal.key
    if key is None or (key.shared_parents is not None and parent in key.shared_parents):
        return parent
    return f"{key.id}/{parent}"


def _from_config(alias: str, settings: Any) -> ClientKey:
    fields = {f: getattr(settings, f) for f in KeyPolicy.__struct_fields__}
    digest = settings.hash or hash_key(settings.key)
    shown = settings.key[:SHOWN] if settings.key else ""
    return ClientKey(
        id=f"cfg_{alias}", alias=alias, hash=digest, shown=shown, source="config", **fields
    )


class Gatekeeper:
    """Keys, tokens and limits for one engine (see the module docstring)."""

    def __init__(self, config: Config, limiter: Limiter | None = None) -> None:
        self.config = config
        self._static = [_from_config(alias, s) for alias, s in config.keys.items()]
        self.ring = KeyRing(self._static)
        self._secret = derive_secret(config.admin_key, config.token_secret)
        self.store: KeyStore | None = None
        self._local = LocalLimiter(spent=self.record_spent)
        self.limiter: Limiter = limiter if limiter is not None else self._local
        # Spending not yet written, by (key id, period start); and the task that writes it.
        self._pending: dict[tuple[str, float], int] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: True when requests need a key (see the module docstring).
        self.required = bool(self._static) or config.admin_key is not None
        #: This worker's part of every limit (:meth:`split_across`); None: all of it.
        self.share: Share | None = None
        # Each key's policy cut to this worker's part, by key id: (key, part, the
        # first limit whose part is 0 or None).
        self._parts: dict[str, tuple[ClientKey, ClientKey, str | None]] = {}

    def split_across(self, share: Share) -> None:
        """Enforce ``share`` of every limit here: a worker of ``serve --workers N``.

        Only when the counters live in this process: with ``limits_url`` every
        worker counts in Redis against the whole limit. Called before the app
        starts, so that the seeded budget spending is split too.
        """
        if self.config.limits_url or share.workers < 2:
            return
        self.share = share
        cap = self.config.max_streams
        if share.slot == 0 and cap and share.of(cap) < cap:
            log.info("max_streams %d is split across %d workers", cap, share.workers)
        if share.slot != share.workers - 1:
            return  # (the last worker has the smallest parts: it alone warns)
        for key in self._static:
            empty = share.empty(key)
            if empty is not None:
                log.warning(
                    "key %s: %s %d is less than one per worker (%d workers), so some "
                    "workers refuse it; set SSE_ENGINE_LIMITS_URL to share one counter",
                    key.alias, empty, getattr(key, empty), share.workers,
                )  # fmt: skip

    def _part(self, key: ClientKey, share: Share) -> tuple[ClientKey, str | None]:
        """``key`` with its limits cut to ``share``, and the first limit whose part
        is 0 (:meth:`Share.empty`); cached until the key changes."""
        cached = self._parts.get(key.id)
        if cached is not None and cached[0] is key:
            return cached[1], cached[2]
        part = share.policy(key)
        assert isinstance(part, ClientKey)
        empty = share.empty(key)
        self._parts[key.id] = (key, part, empty)
        return part, empty

    # -- start-up and refresh ------------------------------------------------------

    async def open(self, store: KeyStore) -> None:
        """Read the stored keys and what they spent (at start-up)."""
        self.store = store
        await self.refresh()
        spent = await store.spent()
        if self.share is not None:
            # Each worker was told all the key spent: it counts its part of it.
            spent = {period: self.share.of(tokens) for period, tokens in spent.items()}
        self._local.seed.update(spent)
        seed = getattr(self.limiter, "seed", None)
        if isinstance(seed, dict) and seed is not self._local.seed:
            seed.update(spent)

    async def refresh(self) -> None:
        """Re-read the stored keys into the ring (after a change, and every ``key_refresh``)."""
        if self.store is None:
            return
        stored = await self.store.load()
        self.ring.replace([*stored, *self._static])
        self.required = self.required or bool(stored)

    # -- who is asking ---------------------------------------------------------------

    def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, str], *, query_token: bool
    ) -> Principal:
        """The request's principal; :class:`Unauthorized` for a missing or bad credential.

        ``query_token``: the route accepts ``?token=`` (the GET streams a page reads).
        """
        if not self.required:
            return ANONYMOUS
        for name in _KEY_PARAMS:
            if name in query:
                raise Unauthorized(
                    f"a key is never accepted in the URL (`{name}`): send it as "
                    "`Authorization: Bearer`, or mint a token with POST /v1/tokens"
                )
        credential = _header_credential(headers)
        if credential is None and "token" in query:
            credential = query["token"]
            if not credential.startswith(TOKEN_PREFIX):
                raise Unauthorized(
                    "`token` takes a token from POST /v1/tokens, never a key: a key "
                    "in a URL ends up in logs and browser history"
                )
            if not query_token:
                raise Unauthorized(
                    "this route does not take `?token=`: send the key or token as "
                    "`Authorization: Bearer`"
                )
        if credential is None:
            raise Unauthorized(
                "this gateway needs a key: `Authorization: Bearer sk-sse-...` "
                "(or `x-api-key`, or a token from POST /v1/tokens)"
            )
        if not plausible(credential):
            raise Unauthorized("invalid API key")
        if credential.startswith(TOKEN_PREFIX):
            key_id = read_token(self._secret, credential)
            key = self.ring.by_id(key_id)
            if key is None:
                raise Unauthorized("this token's key no longer exists")
            if key.expired(time.time()):
                raise Unauthorized("this token's key has expired")
            return Principal(key, via_token=True)
        admin = self.config.admin_key
        if admin is not None and hmac.compare_digest(credential.encode(), admin.encode()):
            return ADMIN
        return Principal(self.ring.find(credential))

    def mint(self, principal: Principal, ttl: float | None) -> tuple[str, int]:
        """A token for the principal's key, valid ``ttl`` seconds (capped by ``token_ttl``)."""
        if principal.key is None:
            raise Forbidden("tokens are minted with a client key, not the admin key")
        if principal.via_token:
            raise Forbidden("a token cannot mint another: use the key")
        seconds = self.config.token_ttl if ttl is None else min(ttl, self.config.token_ttl)
        expires = int(time.time() + seconds)
        if principal.key.expires_at is not None:
            expires = min(expires, int(principal.key.expires_at))
        return mint_token(self._secret, principal.key.id, expires), expires

    # -- how much --------------------------------------------------------------------

    async def admit(
        self, principal: Principal, model: str, reserve: int, live: int
    ) -> Admission | None:
        """The request's share of its key's limits (``None`` when it has none to take).

        ``model`` is what the key's ``models`` patterns are matched against
        (``provider/model``, or a fallback's name); ``live`` the generations
        running in this process, for ``max_streams``.
        """
        cap = self.config.max_streams
        share = self.share
        if cap and live >= (cap if share is None else share.of(cap)):
            raise Overloaded(
                f"the gateway is relaying as many streams as it may ({cap}); retry shortly"
                if share is None
                else f"this worker is relaying as many streams as its part of max_streams "
                f"{cap} allows ({share.of(cap)}: the limit is split across {share.workers} "
                "workers); retry shortly",
                retry_after=1.0,
            )
        key = principal.key
        if key is None:
            return None
        if not key.allows_model(model):
            raise Forbidden(f"this key may not use the model `{model}`")
        if key.rpm is None and key.tpm is None and key.max_streams is None:
            if key.budget_tokens is None:
                return None
        if share is not None:
            return self._admit_part(key, share, reserve)
        return await self.limiter.admit(key.id, key, reserve)

    def _admit_part(self, key: ClientKey, share: Share, reserve: int) -> Admission:
        """:meth:`admit` against this worker's part of the key's limits."""
        part, empty = self._part(key, share)
        if empty is not None:
            kind = QuotaExceeded if empty == "budget_tokens" else RateLimited
            error = kind(
                f"this key's {empty} of {getattr(key, empty)} is split across the "
                f"gateway's {share.workers} workers and this worker's part of it is 0: "
                "set SSE_ENGINE_LIMITS_URL (Redis) so that the workers share one "
                f"counter, or raise {empty} to at least {share.workers}"
            )
            error.retry = False
            error.headers = rate_headers(
                part, requests=0, requests_reset=0.0, tokens=0, tokens_reset=0.0
            )
            raise error
        try:
            return self._local.admit_now(key.id, part, reserve)
        except RateLimited as exc:
            exc.message += (
                f" (this worker's part of the key's limit: it is split across "
                f"{share.workers} workers unless SSE_ENGINE_LIMITS_URL shares one counter)"
            )
            raise

    async def usage(self, key: ClientKey) -> dict[str, Any]:
        """``GET /v1/key``: the key's limits and what is left (of all gateways', with Redis)."""
        policy = msgspec.to_builtins(key.policy())
        view: dict[str, Any] = {"id": key.id, "alias": key.alias, "limits": policy}
        share = self.share
        if share is not None:
            # What this worker enforces, and what is left of that.
            key = self._part(key, share)[0]
            view["workers"] = share.workers
            view["worker_limits"] = msgspec.to_builtins(key.policy())
        used = await self.limiter.usage(key.id, key)
        left = {}
        for limit, count in (
            ("rpm", "requests_in_window"),
            ("tpm", "tokens_in_window"),
            ("max_streams", "streams"),
            ("budget_tokens", "budget_used"),
        ):
            value = getattr(key, limit)
            if value is not None:
                left[limit] = max(0, value - int(used[count] or 0))
        view["used"], view["remaining"] = used, left
        return view

    def record_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        """Note a generation's spending against its key's budget, for the store.

        Written behind, in one batch a second at most: a write per request
        would queue without bound on one SQLite connection under load. A crash
        loses at most the last second's spending.
        """
        if self.store is None:
            return
        period = (key_id, period_start)
        self._pending[period] = self._pending.get(period, 0) + tokens
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(SPEND_FLUSH)
        finally:
            self._flusher = None
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        store = self.store
        if store is None:
            return
        for (key_id, period_start), tokens in pending.items():
            try:
                await store.add_spent(key_id, period_start, tokens)
            except StoreUnavailable as exc:
                log.warning("could not record a key's spending: %s", exc.message)

    # -- the admin API -----------------------------------------------------------------

    def _stored(self) -> KeyStore:
        if self.store is None:
            raise NotFound("no key store is open")
        return self.store

    def get(self, key_id: str) -> ClientKey:
        key = self.ring.by_id(key_id)
        if key is None:
            raise NotFound(f"no key with id `{key_id}`")
        return key

    async def create(self, alias: str, policy: KeyPolicy) -> tuple[ClientKey, str]:
        """A new key; returns it and its secret (shown this once, never stored)."""
        if any(k.alias == alias for k in self.ring):
            raise InvalidFields(f"a key named `{alias}` exists already")
        secret = new_key()
        fields = {f: getattr(policy, f) for f in KeyPolicy.__struct_fields__}
        key = ClientKey(
            id=new_key_id(),
            alias=alias,
            hash=hash_key(secret),
            shown=secret[:SHOWN],
            created_at=time.time(),
            **fields,
        )
        await self._stored().put(key)
        await self.refresh()
        self.required = True
        return key, secret

    def _admin_owned(self, key_id: str) -> ClientKey:
        key = self.get(key_id)
        if key.source == "config":
            raise Forbidden(f"`{key.alias}` is defined in the config file: change it there")
        return key

    async def update(self, key_id: str, changes: dict[str, Any]) -> ClientKey:
        """Change a key's alias or policy fields (the secret stays)."""
        key = self._admin_owned(key_id)
        try:
            updated = msgspec.convert(
                {**msgspec.to_builtins(key), **changes}, ClientKey, strict=False
            )
        except msgspec.ValidationError as exc:
            raise InvalidFields(str(exc)) from None
        await self._stored().put(updated)
        await self.refresh()
        return updated

    async def rotate(self, key_id: str) -> tuple[ClientKey, str]:
        """A new secret for the key (same id, alias and limits); the old one stops working."""
        key = self._admin_owned(key_id)
        secret = new_key()
        rotated = msgspec.structs.replace(key, hash=hash_key(secret), shown=secret[:SHOWN])
        await self._stored().put(rotated)
        await self.refresh()
        return rotated, secret

    async def delete(self, key_id: str) -> None:
        self._admin_owned(key_id)
        await self._stored().delete(key_id)
        await self.refresh()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()  # (it writes what is pending on its way out)
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush()
        await self.limiter.aclose()
        if self.store is not None:
            store, self.store = self.store, None
            await store.aclose()


def _header_credential(headers: Mapping[str, str]) -> str | None:
    """The key or token in ``Authorization: Bearer``, ``x-api-key`` or ``x-goog-api-key``."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("use `Authorization: Bearer <key>`")
        return value.strip()
    return headers.get("x-api-key") or headers.get("x-goog-api-key")
