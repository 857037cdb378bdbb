"""Client keys at run time: the admin API, a key's own view, and tokens for pages.

::

    POST   /v1/admin/keys             {"alias", <policy>...} -> 201 the key, its secret (once)
    GET    /v1/admin/keys             every key (config and stored), never a secret or hash
    GET    /v1/admin/keys/{id}        one key
    PATCH  /v1/admin/keys/{id}        {"alias"?, <policy>...}: change it (null: unset)
    DELETE /v1/admin/keys/{id}        revoke it: its streams finish, its next request is 401
    POST   /v1/admin/keys/{id}/rotate a new secret, same id and limits -> {"key": ...}
    GET    /v1/key                    the calling key: its limits and what it used
    POST   /v1/tokens                 {"ttl"?} -> {"token", "expires_at"}, for ?token=

The admin routes need the admin key (``SSE_ENGINE_ADMIN_KEY``): a client key
gets 403. ``<policy>`` is :class:`~engine.keys.KeyPolicy`'s fields (``models``,
``rpm``, ``tpm``, ``max_streams``, ``budget_tokens``, ``budget_period``,
``expires_at``, ``shared_parents``). Keys from the config file are listed but
changed only there (403).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from ..errors import Forbidden, InvalidFields
from ..gateway import ENGINE
from ..keys import Alias, ClientKey, KeyPolicy, Principal
from ..middleware import expect_handler, principal
from ._io import json_response, read_json

__all__ = ["routes"]

routes = web.RouteTableDef()


class NewKey(KeyPolicy, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/admin/keys``."""

    alias: Alias


class TokenRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/tokens`` (may be empty)."""

    ttl: Annotated[float, Meta(gt=0)] | None = None


_PATCHABLE = frozenset({"alias", *KeyPolicy.__struct_fields__})


def _shown(key: ClientKey, secret: str | None = None) -> dict[str, Any]:
    """A key as the API shows it: everything but its hash (and its secret, but once)."""
    view: dict[str, Any] = msgspec.to_builtins(key)
    view.pop("hash", None)
    if secret is not None:
        view["key"] = secret
    return view


def _admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.admin:
        if not request.app[ENGINE].config.admin_key:
            raise Forbidden("the admin API is off: set SSE_ENGINE_ADMIN_KEY (admin_key) to use it")
        raise Forbidden("the admin API needs the admin key")
    return who


@routes.post("/v1/admin/keys", expect_handler=expect_handler)
async def create_key(request: web.Request) -> web.Response:
    _admin(request)
    body = await read_json(request, NewKey)
    policy = KeyPolicy(**{f: getattr(body, f) for f in KeyPolicy.__struct_fields__})
    key, secret = await request.app[ENGINE].gate.create(body.alias, policy)
    return json_response(_shown(key, secret), status=201)


@routes.get("/v1/admin/keys")
async def list_keys(request: web.Request) -> web.Response:
    _admin(request)
    keys = sorted(request.app[ENGINE].gate.ring, key=lambda k: (k.created_at, k.id))
    return json_response({"object": "list", "data": [_shown(k) for k in keys]})


@routes.get("/v1/admin/keys/{id}")
async def get_key(request: web.Request) -> web.Response:
    _admin(request)
    return json_response(_shown(request.app[ENGINE].gate.get(request.match_info["id"])))


@routes.patch("/v1/admin/keys/{id}", expect_handler=expect_handler)
async def update_key(request: web.Request) -> web.Response:
    _admin(request)
    changes = await read_json(request, dict[str, Any])
    unknown = sorted(set(changes) - _PATCHABLE)
    if unknown:
        raise InvalidFields(f"a key has no field `{unknown[0]}` that can be changed")
    key = await request.app[ENGINE].gate.update(request.match_info["id"], changes)
    return json_response(_shown(key))


@routes.delete("/v1/admin/keys/{id}")
async def delete_key(request: web.Request) -> web.Response:
    _admin(request)
    await request.app[ENGINE].gate.delete(request.match_info["id"])
    return json_response({"id": request.match_info["id"], "deleted": True})


@routes.post("/v1/admin/keys/{id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    _admin(request)
    key, secret = await request.app[ENGINE].gate.rotate(request.match_info["id"])
    return json_response(_shown(key, secret))


@routes.get("/v1/key")
async def own_key(request: web.Request) -> web.Response:
    key = principal(request).key
    if key is None:
        raise Forbidden("no client key: this request was made with the admin key or none")
    return json_response(await request.app[ENGINE].gate.usage(key))


@routes.post("/v1/tokens", expect_handler=expect_handler)
async def mint(request: web.Request) -> web.Response:
    who = principal(request)
    if request.can_read_body:
        ttl = (await read_json(request, TokenRequest)).ttl
    else:
        ttl = None
    token, expires = request.app[ENGINE].gate.mint(who, ttl)
    return json_response({"token": token, "expires_at": expires})
