"""Client keys and the short-lived tokens minted from them; sans-IO.

A gateway that faces the internet must not spend its provider keys for anyone
who can reach the port. Clients present their own key, ``sk-sse-`` and 43
characters of :func:`secrets.token_urlsafe` (256 bits), the ways the SDKs send
one: ``Authorization: Bearer`` (openai), ``x-api-key`` (anthropic),
``x-goog-api-key`` (Google's). A browser's ``EventSource`` cannot set a header,
so a key may mint a *token* (``POST /v1/tokens``): signed, scoped to that key,
valid for minutes, accepted as ``?token=`` on the streams a page reads. A key
itself is never accepted in a URL (URLs end up in logs and browser history).

Keys are stored as their SHA-256, never in the clear: a 256-bit random secret
needs no slow password hash (nothing to brute-force), and a hash lets the key
ring find a key in one dict lookup; the match is then confirmed with
:func:`hmac.compare_digest`. Nothing here logs or echoes a key: a
:class:`ClientKey` holds only its hash and a short prefix to recognise it by.

A :class:`ClientKey` is a :class:`KeyPolicy` (what the key may do: models,
limits, expiry, shared memory) plus its identity. The same policy fields come
from the TOML config (``[keys.<alias>]``) and from the admin API.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta, Struct

from .errors import Unauthorized

__all__ = [
    "KEY_PREFIX",
    "TOKEN_PREFIX",
    "ClientKey",
    "KeyPolicy",
    "KeyRing",
    "Principal",
    "hash_key",
    "mint_token",
    "new_key",
    "read_token",
]

KEY_PREFIX = "sk-sse-"
TOKEN_PREFIX = "sset-"
#: Longest credential read from a request: ours are 50 (keys) and about 130
#: (tokens) characters; anything longer is refused before it is hashed.
MAX_CREDENTIAL = 512
#: Characters of a key shown in listings and logs: the prefix and 4 of its secret.
SHOWN = len(KEY_PREFIX) + 4

Alias = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
ModelPattern = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
Count = Annotated[int, Meta(ge=1)]
Period = Literal["day", "week", "month"]


class KeyPolicy(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a client key may do. Every limit is optional: unset, it does not apply."""

    #: ``provider/model`` patterns it may use (``*`` wildcards: ``"openai/*"``,
    #: ``"mock/*"``, a fallback's name); unset: every model.
    models: list[ModelPattern] | None = None
    #: Requests that start a generation, per sliding minute.
    rpm: Count | None = None
    #: Tokens (input + output) per sliding minute; a request reserves its prompt
    #: estimate and ``max_tokens`` when admitted, its real usage counts at its end.
    tpm: Count | None = None
    #: Generations running at once (a detached one holds its slot until it ends).
    max_streams: Count | None = None
    #: Tokens per ``budget_period`` (UTC calendar), then 429 ``insufficient_quota``.
    budget_tokens: Count | None = None
    budget_period: Period = "month"
    #: Unix seconds after which the key is refused.
    expires_at: float | None = None
    #: Conversation parents this key shares with every key naming them (memory
    #: under other parents is private to the key that wrote it).
    shared_parents: list[Annotated[str, Meta(min_length=1, max_length=200)]] | None = None

    def allows_model(self, path: str) -> bool:
        """True if this key may use ``path`` (``provider/model`` or a fallback's name)."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.models)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class ClientKey(KeyPolicy, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A client key as stored: its policy, its id and alias, and the hash of its secret."""

    id: str
    alias: Alias
    #: SHA-256 of the secret, hex.
    hash: str
    #: The secret's first characters (``sk-sse-AbCd``), to recognise it by.
    shown: str = ""
    created_at: float = 0.0
    #: ``config`` for keys from the TOML file (read-only), else ``admin``.
    source: Literal["config", "admin"] = "admin"

    def policy(self) -> KeyPolicy:
        """The policy fields alone."""
        fields = {f: getattr(self, f) for f in KeyPolicy.__struct_fields__}
        return KeyPolicy(**fields)


class Principal(NamedTuple):
    """Who a request is: a client key, the admin, or nobody (no keys configured)."""

    key: ClientKey | None = None
    admin: bool = False
    #: It came with a token (``POST /v1/tokens``), not the key itself.
    via_token: bool = False

    @property
    def owner(self) -> str | None:
        """Whose streams and conversations a request sees: the key's id (``None``: all)."""
        return None if self.admin or self.key is None else self.key.id


ANONYMOUS = Principal()
ADMIN = Principal(admin=True)


def new_key() -> str:
    """A fresh client key: ``sk-sse-`` and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """The stored form of a key (SHA-256, hex)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def plausible(value: str) -> bool:
    """True if ``value`` could be a credential: short, printable ASCII (no CR/LF, no spaces)."""
    return 0 < len(value) <= MAX_CREDENTIAL and value.isascii() and value.isprintable()


class KeyRing:
    """The keys a gateway accepts, by hash; rebuilt whole when they change.

    Looking a key up costs one SHA-256 and one dict lookup, with no I/O: the
    admission path never waits for the key store (the API refreshes the ring
    after each change, and :meth:`replace` is how a refresh lands).
    """

    def __init__(self, keys: Iterable[ClientKey] = ()) -> None:
        self._by_hash: dict[str, ClientKey] = {}
        self._by_id: dict[str, ClientKey] = {}
        self.replace(keys)

    def replace(self, keys: Iterable[ClientKey]) -> None:
        by_hash, by_id = {}, {}
        for key in keys:
            by_hash[key.hash] = key
            by_id[key.id] = key
        self._by_hash, self._by_id = by_hash, by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ClientKey]:
        return iter(list(self._by_id.values()))

    def by_id(self, key_id: str) -> ClientKey | None:
        return self._by_id.get(key_id)

    def find(self, secret: str, now: float | None = None) -> ClientKey:
        """The key ``secret`` is, or :class:`Unauthorized` (unknown or expired)."""
        digest = hash_key(secret)
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.hash, digest):
            raise Unauthorized("invalid API key")
        if key.expired(time.time() if now is None else now):
            raise Unauthorized("this API key has expired")
        return key


# -- tokens --------------------------------------------------------------------------
#
# sset-<payload>.<signature>, both base64url without padding; the payload is
# {"k": key id, "e": expiry (unix seconds)}, the signature HMAC-SHA256 over the
# payload's characters with the gateway's token secret.


class _Claims(Struct, array_like=True):
    k: str
    e: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def mint_token(secret: bytes, key_id: str, expires_at: int) -> str:
    """A token for ``key_id`` valid until ``expires_at`` (unix seconds)."""
    payload = _b64(msgspec.json.encode(_Claims(k=key_id, e=expires_at)))
    return f"{TOKEN_PREFIX}{payload}.{_sign(secret, payload)}"


def read_token(secret: bytes, token: str, now: float | None = None) -> str:
    """The key id a token was minted for; :class:`Unauthorized` if forged or expired."""
    payload, dot, signature = token[len(TOKEN_PREFIX) :].partition(".")
    if not token.startswith(TOKEN_PREFIX) or not dot:
        raise Unauthorized("malformed token")
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise Unauthorized("invalid token")
    try:
        claims = msgspec.json.decode(_unb64(payload), type=_Claims)
    except (ValueError, msgspec.DecodeError):
        raise Unauthorized("malformed token") from None
    if (time.time() if now is None else now) >= claims.e:
        raise Unauthorized("this token has expired: mint another with POST /v1/tokens")
    return claims.k


def derive_secret(admin_key: str | None, configured: str | None) -> bytes:
    """The token-signing secret: configured, else derived from the admin key, else random.

    Every process that must accept another's tokens (``--workers``, several
    boxes) needs the same one: set ``token_secret`` or share the admin key. A
    random secret (neither set) makes tokens valid in this process only.
    """
    if configured:
        return configured.encode()
    if admin_key:
        return hmac.new(admin_key.encode(), b"sse-engine tokens", hashlib.sha256).digest()
    return secrets.token_bytes(32)
