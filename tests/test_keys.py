"""Client keys on a loopback gateway: who may call, in which shape a refusal comes, and
what a key may see (its own conversations and streams), read by the official SDKs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from engine import create_app
from engine.cli import main, refuse_open
from engine.config import Config
from engine.gateway import Engine
from engine.keys import hash_key, mint_token

from .helpers import make_config, read_events, read_until, running

KEY = "sk-sse-" + "k" * 43
OTHER = "sk-sse-" + "o" * 43
ADMIN = "admin-" + "a" * 32
HI = {"messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "mock/mock-1", "messages": [{"role": "user", "content": "hi"}]}


def keyed(**overrides: Any) -> Config:
    overrides.setdefault("keys", {"app": {"key": KEY}, "other": {"key": OTHER}})
    overrides.setdefault("admin_key", ADMIN)
    return make_config(**overrides)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def gateway(aiohttp_client):
    async def start(config: Config | None = None):
        return await aiohttp_client(create_app(config or keyed()))

    return start


# -- who may call -------------------------------------------------------------------


async def test_an_open_gateway_needs_no_key(gateway):
    client = await gateway(make_config())
    response = await client.post("/v1/chat", json=HI, headers=bearer("anything at all"))
    assert response.status == 200


async def test_with_keys_a_request_without_one_is_401_in_the_native_shape(gateway):
    client = await gateway()
    response = await client.post("/v1/chat", json=HI)
    assert response.status == 401
    body = await response.json()
    assert body["type"] == "unauthorized" and "Authorization: Bearer" in body["message"]


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "x-goog-api-key"])
async def test_the_key_is_read_the_ways_the_sdks_send_it(gateway, header):
    client = await gateway()
    value = f"Bearer {KEY}" if header == "Authorization" else KEY
    response = await client.post("/v1/chat", json=HI, headers={header: value})
    assert response.status == 200, await response.text()


async def test_the_probe_needs_no_key_and_unknown_paths_are_404_not_401(gateway):
    client = await gateway()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/nothing-here")).status == 404


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("sk-sse-" + "x" * 43, id="unknown"),
        pytest.param("k" * 600, id="600-chars"),
        pytest.param("sk-sse-é" + "x" * 40, id="non-ascii"),
        pytest.param(KEY[:-1], id="one-char-short"),
        pytest.param(KEY + "x", id="one-char-long"),
    ],
)
async def test_a_wrong_key_is_401(gateway, bad):
    client = await gateway()
    headers = {"Authorization": f"Bearer {bad}".encode().decode("latin-1")}
    response = await client.post("/v1/chat", json=HI, headers=headers)
    assert response.status == 401
    assert (await response.json())["message"] == "invalid API key"


async def test_a_key_of_100_kb_or_with_cr_lf_is_refused_cleanly():
    # Under `serve`'s server, which answers what its parser refuses in JSON.
    async with running(create_app(keyed()), handler_cancellation="serve") as url:
        host, port = url.removeprefix("http://").split(":")
        for header in (b"Authorization: Bearer " + b"k" * 100_000, b"Authorization: Bearer a\rb"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/chat HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            status = int(head.split(b" ", 2)[1])
            assert status in (400, 401, 431), head[:200]
            assert b"application/json" in head and b"kkkk" not in head


async def test_a_key_is_never_accepted_in_the_url(gateway):
    client = await gateway()
    for name in ("api_key", "key", "token"):
        response = await client.get("/v1/chat/stream", params={"q": "hi", name: KEY})
        assert response.status == 401
        assert "URL" in (await response.json())["message"]


async def test_a_config_may_hold_only_the_hash_of_a_key(gateway):
    client = await gateway(keyed(keys={"app": {"hash": hash_key(KEY)}}))
    assert (await client.post("/v1/chat", json=HI, headers=bearer(KEY))).status == 200
    assert (await client.post("/v1/chat", json=HI, headers=bearer(OTHER))).status == 401


async def test_an_expired_key_is_401(gateway):
    client = await gateway(keyed(keys={"app": {"key": KEY, "expires_at": time.time() - 1}}))
    response = await client.post("/v1/chat", json=HI, headers=bearer(KEY))
    assert response.status == 401
    assert "expired" in (await response.json())["message"]


# -- the SDKs' own errors --------------------------------------------------------------


async def test_the_openai_sdk_raises_its_errors_for_401_and_403(gateway):
    config = keyed(keys={"app": {"key": KEY, "models": ["openai/*"]}})
    client = await gateway(config)
    base = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(**CHAT)
    assert caught.value.status_code == 401
    async with openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.chat.completions.create(**CHAT)
    assert "mock/mock-1" in denied.value.message


async def test_the_anthropic_sdk_raises_its_errors_for_401_and_403(gateway):
    config = keyed(keys={"app": {"key": KEY, "models": ["anthropic/*"]}})
    client = await gateway(config)
    base = str(client.make_url(""))
    ask = {"model": "mock/mock-1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with anthropic.AsyncAnthropic(base_url=base, api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk.messages.create(**ask)
    assert caught.value.body["error"]["type"] == "authentication_error"
    async with anthropic.AsyncAnthropic(base_url=base, api_key=KEY, max_retries=0) as sdk:
        with pytest.raises(anthropic.PermissionDeniedError):
            await sdk.messages.create(**ask)


async def test_model_patterns_allow_a_provider_or_one_model(gateway):
    client = await gateway(keyed(keys={"app": {"key": KEY, "models": ["mock/mock-1"]}}))
    ok = await client.post("/v1/chat", json={**HI, "model": "mock-1"}, headers=bearer(KEY))
    assert ok.status == 200
    other = await client.post("/v1/chat", json={**HI, "model": "mock-2"}, headers=bearer(KEY))
    assert other.status == 403
    assert (await other.json())["type"] == "forbidden"


# -- the admin API ---------------------------------------------------------------------


async def test_the_admin_makes_lists_changes_rotates_and_revokes_keys(gateway):
    client = await gateway()
    admin = bearer(ADMIN)
    made = await client.post("/v1/admin/keys", json={"alias": "web", "rpm": 5}, headers=admin)
    assert made.status == 201
    key = await made.json()
    secret, kid = key["key"], key["id"]
    assert secret.startswith("sk-sse-") and len(secret) >= 50 and "hash" not in key
    assert (await client.post("/v1/chat", json=HI, headers=bearer(secret))).status == 200

    listed = await (await client.get("/v1/admin/keys", headers=admin)).json()
    shown = {k["alias"]: k for k in listed["data"]}
    assert set(shown) == {"app", "other", "web"}
    assert all("key" not in k and "hash" not in k for k in listed["data"])
    assert shown["web"]["shown"] == secret[:11] and shown["app"]["source"] == "config"

    patched = await client.patch(f"/v1/admin/keys/{kid}", json={"rpm": 7}, headers=admin)
    assert (await patched.json())["rpm"] == 7
    own = await (await client.get("/v1/key", headers=bearer(secret))).json()
    assert own["limits"]["rpm"] == 7 and own["used"]["requests_in_window"] == 1
    assert own["remaining"] == {"rpm": 6}

    rotated = await (await client.post(f"/v1/admin/keys/{kid}/rotate", headers=admin)).json()
    assert rotated["id"] == kid and rotated["key"] != secret
    assert (await client.post("/v1/chat", json=HI, headers=bearer(secret))).status == 401
    assert (await client.post("/v1/chat", json=HI, headers=bearer(rotated["key"]))).status == 200

    assert (await client.delete(f"/v1/admin/keys/{kid}", headers=admin)).status == 200
    gone = await client.post("/v1/chat", json=HI, headers=bearer(rotated["key"]))
    assert gone.status == 401
    assert (await client.get(f"/v1/admin/keys/{kid}", headers=admin)).status == 404


async def test_the_admin_api_refuses_a_client_key_and_config_keys_stay_read_only(gateway):
    client = await gateway()
    assert (await client.get("/v1/admin/keys", headers=bearer(KEY))).status == 403
    answer = await client.patch("/v1/admin/keys/cfg_app", json={"rpm": 1}, headers=bearer(ADMIN))
    assert answer.status == 403 and "config" in (await answer.json())["message"]
    bad = await client.post("/v1/admin/keys", json={"alias": "x", "rpm": 0}, headers=bearer(ADMIN))
    assert bad.status == 422
    unknown = await client.patch(
        "/v1/admin/keys/cfg_app", json={"hash": "0"}, headers=bearer(ADMIN)
    )
    assert unknown.status in (403, 422)


async def test_the_admin_api_is_off_without_an_admin_key(gateway):
    client = await gateway(keyed(admin_key=None))
    answer = await client.get("/v1/admin/keys", headers=bearer(KEY))
    assert answer.status == 403 and "SSE_ENGINE_ADMIN_KEY" in (await answer.json())["message"]


async def test_stored_keys_survive_a_restart(aiohttp_client, tmp_path):
    config = keyed(memory_url=f"sqlite:///{tmp_path}/memory.db")
    first = await aiohttp_client(create_app(config))
    made = await first.post("/v1/admin/keys", json={"alias": "kept"}, headers=bearer(ADMIN))
    secret = (await made.json())["key"]
    await first.close()
    # No key in the file now, and no admin key: the stored key still closes the gateway.
    second = await aiohttp_client(create_app(keyed(memory_url=config.memory_url, keys={})))
    assert (await second.post("/v1/chat", json=HI, headers=bearer(secret))).status == 200
    assert (await second.post("/v1/chat", json=HI)).status == 401


async def test_a_key_revoked_while_its_stream_runs_finishes_that_stream(gateway):
    client = await gateway()
    made = await client.post("/v1/admin/keys", json={"alias": "brief"}, headers=bearer(ADMIN))
    key = await made.json()
    body = {**HI, "options": {"max_tokens": 6, "interval_ms": 30}}
    stream = await client.post("/v1/chat/stream", json=body, headers=bearer(key["key"]))
    assert stream.status == 200
    await read_until(stream, 2)
    assert (await client.delete(f"/v1/admin/keys/{key['id']}", headers=bearer(ADMIN))).status == 200
    rest = await read_events(stream)
    assert rest[-1].event == "done"
    after = await client.post("/v1/chat", json=HI, headers=bearer(key["key"]))
    assert after.status == 401


# -- tokens for EventSource ------------------------------------------------------------


async def test_a_token_opens_the_get_stream_and_its_resume_but_not_other_routes(gateway):
    client = await gateway()
    minted = await client.post("/v1/tokens", json={"ttl": 60}, headers=bearer(KEY))
    token = (await minted.json())["token"]
    assert token.startswith("sset-")
    stream = await client.get("/v1/chat/stream", params={"q": "hi", "token": token})
    assert stream.status == 200
    events = await read_events(stream)
    assert events[-1].event == "done"
    sid = events[0].id.partition(":")[0]
    resumed = await client.get(f"/v1/streams/{sid}", params={"token": token})
    assert resumed.status == 200
    post = await client.post("/v1/chat", json=HI, params={"token": token})
    assert post.status == 401 and "token" in (await post.json())["message"]
    # As a header, a token works anywhere a key does, but cannot mint another.
    assert (await client.post("/v1/chat", json=HI, headers=bearer(token))).status == 200
    assert (await client.post("/v1/tokens", headers=bearer(token))).status == 403


async def test_an_expired_tampered_or_foreign_token_is_401(gateway):
    client = await gateway()
    token = (await (await client.post("/v1/tokens", headers=bearer(KEY))).json())["token"]
    payload, _, signature = token.partition(".")
    tampered = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    expired = mint_token(b"another secret entirely", "cfg_app", int(time.time()) + 60)
    for bad in (tampered, expired, "sset-garbage", token[:-3]):
        response = await client.get("/v1/chat/stream", params={"q": "hi", "token": bad})
        assert response.status == 401, bad


async def test_a_token_expires_and_dies_with_its_key(gateway):
    client = await gateway(keyed(token_secret="s" * 32))
    expired = mint_token(b"s" * 32, "cfg_app", int(time.time()) - 1)
    response = await client.get("/v1/chat/stream", params={"q": "hi", "token": expired})
    assert response.status == 401 and "expired" in (await response.json())["message"]
    for_nobody = mint_token(b"s" * 32, "key_deleted", int(time.time()) + 60)
    response = await client.get("/v1/chat/stream", params={"q": "hi", "token": for_nobody})
    assert response.status == 401


# -- what a key may see ---------------------------------------------------------------


async def test_a_key_sees_only_the_conversations_it_wrote(gateway):
    client = await gateway(keyed(keys={"app": {"key": KEY}, "other": {"key": OTHER}}))
    body = {**HI, "session": {"parent": "ChatSession", "id": "42"}}
    assert (await client.post("/v1/chat", json=body, headers=bearer(KEY))).status == 200
    mine = await (await client.get("/v1/memory/ChatSession/42", headers=bearer(KEY))).json()
    assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]
    assert mine["parent"] == "ChatSession"
    theirs = await (await client.get("/v1/memory/ChatSession/42", headers=bearer(OTHER))).json()
    assert theirs["messages"] == []
    cleared = await client.delete("/v1/memory/ChatSession/42", headers=bearer(OTHER))
    assert (await cleared.json())["deleted"] == 0
    admin = await client.get(
        "/v1/memory/ChatSession/42", params={"owner": "cfg_app"}, headers=bearer(ADMIN)
    )
    assert len((await admin.json())["messages"]) == 2
    nosy = await client.get(
        "/v1/memory/ChatSession/42", params={"owner": "cfg_app"}, headers=bearer(OTHER)
    )
    assert nosy.status == 403


async def test_shared_parents_are_shared_between_the_keys_naming_them(gateway):
    shared = {"shared_parents": ["Team"]}
    client = await gateway(
        keyed(keys={"app": {"key": KEY, **shared}, "other": {"key": OTHER, **shared}})
    )
    body = {**HI, "session": {"parent": "Team", "id": "1"}}
    assert (await client.post("/v1/chat", json=body, headers=bearer(KEY))).status == 200
    theirs = await (await client.get("/v1/memory/Team/1", headers=bearer(OTHER))).json()
    assert len(theirs["messages"]) == 2


async def test_only_the_key_that_started_a_stream_may_resume_or_stop_it(gateway):
    client = await gateway()
    body = {**HI, "options": {"max_tokens": 50, "interval_ms": 20}}
    stream = await client.post("/v1/chat/stream", json=body, headers=bearer(KEY))
    sid = stream.headers["X-Stream-Id"] if "X-Stream-Id" in stream.headers else None
    events, _ = await read_until(stream, 2)
    sid = sid or events[0].id.partition(":")[0]
    other = await client.get(f"/v1/streams/{sid}", headers=bearer(OTHER))
    assert other.status == 404
    assert (await client.post(f"/v1/streams/{sid}/stop", headers=bearer(OTHER))).status == 404
    stopped = await client.post(f"/v1/streams/{sid}/stop", headers=bearer(KEY))
    assert (await stopped.json())["state"] == "stopped"
    # ... and after its end too, how it ended is the owner's to learn.
    assert (await client.post(f"/v1/streams/{sid}/stop", headers=bearer(OTHER))).status == 404
    late = await client.post(f"/v1/streams/{sid}/stop", headers=bearer(ADMIN))
    assert (await late.json())["state"] == "stopped"


# -- CORS -------------------------------------------------------------------------------


async def test_cors_is_off_by_default_and_answers_allowed_origins(gateway):
    closed = await gateway()
    response = await closed.post(
        "/v1/chat", json=HI, headers={**bearer(KEY), "Origin": "https://app.example"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers

    client = await gateway(keyed(cors_origins=["https://app.example"]))
    preflight = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    stream = await client.post(
        "/v1/chat/stream", json=HI, headers={**bearer(KEY), "Origin": "https://app.example"}
    )
    assert stream.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Stream-Id" in stream.headers["Access-Control-Expose-Headers"]
    assert "x-ratelimit-remaining-requests" in stream.headers["Access-Control-Expose-Headers"]
    await read_events(stream)
    # An error before the headers carries them too (the page can read the 401).
    refused = await client.post("/v1/chat", json=HI, headers={"Origin": "https://app.example"})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = await client.post("/v1/chat", json=HI, headers={**bearer(KEY), "Origin": "https://x"})
    assert "Access-Control-Allow-Origin" not in other.headers


# -- safe defaults ----------------------------------------------------------------------


def test_serve_refuses_a_network_address_without_keys(capsys):
    assert refuse_open(Config.load(environ={}, host="127.0.0.1")) is None
    assert refuse_open(Config.load(environ={}, host="0.0.0.0")) is not None
    assert refuse_open(Config.load(environ={}, host="0.0.0.0", allow_anonymous=True)) is None
    assert refuse_open(Config.load(environ={}, host="0.0.0.0", admin_key=ADMIN)) is None
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-anonymous" in capsys.readouterr().err


def test_keys_new_prints_a_key_and_its_hash(capsys):
    assert main(["keys", "new"]) == 0
    out = capsys.readouterr().out
    secret = out.split("key:")[1].split()[0]
    assert secret.startswith("sk-sse-") and f'hash = "{hash_key(secret)}"' in out


async def test_connections_per_address_are_capped():
    app = create_app(keyed(max_connections_per_ip=3))
    from engine.server import GatewayRunner

    runner = GatewayRunner(
        app, handler_cancellation=True, header_timeout=10, max_connections_per_ip=3
    )
    await runner.setup()
    from aiohttp import web

    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    held = []
    try:
        for _ in range(3):
            held.append(await asyncio.open_connection(host, port))
        reader, writer = await asyncio.open_connection(host, port)
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused
        writer.close()
        # One closes: the next one is served.
        held.pop()[1].close()
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as response:
                assert response.status == 200
    finally:
        for _, w in held:
            w.close()
        await runner.cleanup()


async def test_a_library_engine_with_keys_still_streams_without_http():
    async with Engine(keyed()) as engine:
        chunks = [c.content async for c in engine.provider("mock").stream([])]
    assert chunks


async def test_the_model_list_shows_what_the_key_may_use(gateway):
    config = keyed(keys={"app": {"key": KEY, "models": ["openai/*"]}, "other": {"key": OTHER}})
    client = await gateway(config)
    mine = await (await client.get("/v1/models", headers=bearer(KEY))).json()
    theirs = await (await client.get("/v1/models", headers=bearer(OTHER))).json()
    assert [m["id"] for m in mine["data"]] == []
    assert "mock/mock-1" in [m["id"] for m in theirs["data"]]


async def test_a_key_store_that_is_down_keeps_a_network_gateway_closed(gateway):
    # Stored keys may exist that it cannot read: beyond loopback it refuses rather than opens.
    down = make_config(host="0.0.0.0", memory_url="redis://127.0.0.1:1/0")
    client = await gateway(down)
    assert (await client.post("/v1/chat", json=HI)).status == 401
    on_loopback = await gateway(make_config(memory_url="redis://127.0.0.1:1/0"))
    assert (await on_loopback.post("/v1/chat", json=HI)).status == 200
