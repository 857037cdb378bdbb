"""GET /metrics after real streams, parsed with prometheus_client's parser; /readyz; JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics as metrics_module
from engine.keys import hash_key
from engine.logs import JSONFormatter
from engine.server import start_server
from engine.testing import FakeOpenAI, Script, serve

from .helpers import ScriptedProvider, make_config, read_until

USER = [{"role": "user", "content": "hi"}]
ADMIN = "admin-key-0123456789-abcdefghij"
SCRAPER = "scrape-token-0123456789-abcdef"
CLIENT = "sk-sse-client-key-0123456789abcdefghijklmnop"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def gen_ai(provider: str, model: str, **more: str) -> dict[str, str]:
    return {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": provider,
        "gen_ai_request_model": model,
        **more,
    }


async def scrape(client, **headers: str):
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples(await resp.text())


async def test_a_mock_stream_moves_the_gen_ai_histograms_and_the_gateway_counters(gateway):
    client = await gateway()
    resp = await client.post(
        "/v1/chat/stream", json={"messages": USER, "options": {"max_tokens": 40}}
    )
    body = await resp.read()
    found = await scrape(client)
    labels = gen_ai("mock", "mock-1")
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1
    assert value(found, "gen_ai_client_operation_duration_seconds_count", **labels) == 1
    assert value(found, "gen_ai_server_time_per_output_token_seconds_count", **labels) == 1
    # The +Inf bucket of TTFT is at 640 s or beyond: reasoning models think for minutes.
    ttft_bounds = [
        float(dict(k[1])["le"])
        for k in found
        if k[0] == "gen_ai_server_time_to_first_token_seconds_bucket"
    ]
    assert max(b for b in ttft_bounds if b != float("inf")) >= 600
    out = gen_ai("mock", "mock-1", gen_ai_token_type="output")
    assert value(found, "gen_ai_client_token_usage_sum", **out) == 40
    assert value(found, "gen_ai_client_token_usage_count", **out) == 1
    inp = gen_ai("mock", "mock-1", gen_ai_token_type="input")
    assert value(found, "gen_ai_client_token_usage_count", **inp) == 1
    assert value(found, "sse_engine_streams_ended_total", reason="done") == 1
    assert value(found, "sse_engine_relayed_chunks_total") == 40
    # Headers and HTTP framing included: at least the body the client read.
    assert value(found, "sse_engine_relayed_bytes_total") >= len(body)
    # Sampled: chunks 1, 17 and 33.
    assert value(found, "sse_engine_chunk_delay_seconds_count") == 3
    assert value(found, "sse_engine_open_streams") == 0
    assert value(found, "sse_engine_generations") == 0
    assert value(found, "sse_engine_resume_logs") == 1
    assert value(found, "sse_engine_resume_log_bytes") > 0


async def test_a_fake_openai_upstream_counts_requests_statuses_retries_and_time_to_first_byte(
    gateway,
):
    fake = FakeOpenAI()
    async with serve(fake.app()) as url:
        providers = {"openai": {"api_key": "sk-x", "base_url": f"{url}/v1", "model": "gpt-t"}}
        client = await gateway(providers=providers)
        # A 503 with Retry-After: 0, then the stream: one retry.
        fake.push(Script(status=503, retry_after="0"), Script(tokens=["a", "b", "c"]))
        resp = await client.post("/v1/chat/stream", json={"messages": USER, "provider": "openai"})
        await resp.read()
        # And a reply not streamed, through the OpenAI endpoint.
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "openai/gpt-t", "messages": USER},
        )
        assert resp.status == 200
        found = await scrape(client)
    name = "sse_engine_upstream_requests_total"
    assert value(found, name, gen_ai_provider_name="openai", status="503") == 1
    assert value(found, name, gen_ai_provider_name="openai", status="200") == 2
    assert value(found, "sse_engine_upstream_retries_total", gen_ai_provider_name="openai") == 1
    ttfb = "sse_engine_upstream_time_to_first_byte_seconds_count"
    assert value(found, ttfb, gen_ai_provider_name="openai") == 3
    labels = gen_ai("openai", "gpt-t")
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1
    # Streamed and not: two operations, one time to first token.
    assert value(found, "gen_ai_client_operation_duration_seconds_count", **labels) == 2
    out = gen_ai("openai", "gpt-t", gen_ai_token_type="output")
    assert value(found, "gen_ai_client_token_usage_count", **out) == 2


async def test_streams_ended_by_stop_and_by_disconnect_and_the_resume_outcomes(gateway):
    gate = asyncio.Event()
    provider = ScriptedProvider([f"t{i} " for i in range(6)], gate=gate, hold_from=2)
    client = await gateway(provider)
    # Stopped on purpose.
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    events, _ = await read_until(resp, 3)
    sid = json.loads(events[0].data)["stream_id"]
    live = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:1"})
    assert live.status == 200
    stop = await client.post(f"/v1/streams/{sid}/stop")
    assert (await stop.json())["state"] == "stopped"
    await resp.read()
    await live.read()
    # Resumes of the ended stream: replayed (twice), 204 past its end, 404 unknown.
    assert (await client.get(f"/v1/streams/{sid}")).status == 200
    last = await client.get(f"/v1/streams/{sid}")
    final = (await last.text()).rsplit(f"id: {sid}:", 1)[1].split("\n", 1)[0]
    after = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:99"})
    assert after.status == 400  # past what was sent: not an outcome the metric counts
    done = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{final}"})
    assert done.status == 204
    assert (await client.get("/v1/streams/nope")).status == 404
    # Its client leaves.
    provider.closed.clear()
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    await read_until(resp, 3)
    resp.close()
    await asyncio.wait_for(provider.closed.wait(), 5)
    for _ in range(100):  # the relay's finally runs right after the producer closed
        found = await scrape(client)
        if value(found, "sse_engine_streams_ended_total", reason="disconnect"):
            break
        await asyncio.sleep(0.01)
    assert value(found, "sse_engine_streams_ended_total", reason="stopped") == 1
    assert value(found, "sse_engine_streams_ended_total", reason="disconnect") == 1
    assert value(found, "sse_engine_resumes_total", outcome="live") == 1
    assert value(found, "sse_engine_resumes_total", outcome="replayed") == 2
    assert value(found, "sse_engine_resumes_total", outcome="204") == 1
    assert value(found, "sse_engine_resumes_total", outcome="404") == 1
    assert value(found, "sse_engine_resumes_total", outcome="410") == 0
    labels = gen_ai("scripted", "scripted-1")
    # A stopped stream has a time to first token, but no time per output token.
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 2
    assert value(found, "gen_ai_server_time_per_output_token_seconds_count", **labels) == 0


async def test_open_streams_and_detached_generations_are_gauges_read_at_scrape_time(gateway):
    gate = asyncio.Event()
    client = await gateway(ScriptedProvider(["a", "b", "c"], gate=gate, hold_from=1))
    resp = await client.post("/v1/chat/stream", json={"messages": USER, "options": {"detach": 30}})
    events, _ = await read_until(resp, 2)
    generation = client.engine.generations.get(json.loads(events[0].data)["stream_id"])
    found = await scrape(client)
    assert value(found, "sse_engine_open_streams") == 1
    assert value(found, "sse_engine_generations") == 1
    assert value(found, "sse_engine_detached_generations") == 0
    resp.close()
    for _ in range(200):
        found = await scrape(client)
        if value(found, "sse_engine_detached_generations") == 1:
            break
        await asyncio.sleep(0.01)
    assert value(found, "sse_engine_detached_generations") == 1
    assert value(found, "sse_engine_open_streams") == 0
    gate.set()
    await asyncio.wait_for(generation.wait_ended(), 5)
    found = await scrape(client)
    assert value(found, "sse_engine_streams_ended_total", reason="done") == 1


async def test_the_model_label_is_capped(gateway, monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_MODELS", 2)
    client = await gateway()
    for model in ("m1", "m2", "m3", "m4", "m1"):
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": f"mock/{model}", "messages": USER, "stream": True},
        )
        await resp.read()
    found = await scrape(client)
    name = "gen_ai_client_operation_duration_seconds_count"
    assert value(found, name, **gen_ai("mock", "m1")) == 2
    assert value(found, name, **gen_ai("mock", "m2")) == 1
    assert value(found, name, **gen_ai("mock", "other")) == 2
    assert not [k for k in found if dict(k[1]).get("gen_ai_request_model") in ("m3", "m4")]


async def test_without_prometheus_client_metrics_answer_503_naming_the_extra(gateway, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    client = await gateway()
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    assert resp.status == 200
    await resp.read()
    resp = await client.get("/metrics")
    assert resp.status == 503
    body = await resp.json()
    assert body["type"] == "metrics_unavailable"
    assert "sse-engine[metrics]" in body["message"]


async def test_metrics_off_is_404_and_the_relay_reports_to_nobody(gateway):
    client = await gateway(metrics=False)
    assert client.engine.supervisor.observer is None
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    await resp.read()
    resp = await client.get("/metrics")
    assert resp.status == 404
    assert "metrics = false" in (await resp.json())["message"]


async def test_with_keys_on_metrics_take_the_admin_key_or_metrics_key_not_a_client_key(gateway):
    client = await gateway(
        admin_key=ADMIN, metrics_key=SCRAPER, keys={"web-app": {"hash": hash_key(CLIENT)}}
    )
    assert (await client.get("/metrics")).status == 401
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {CLIENT}"})
    assert resp.status == 403
    assert (
        await client.get(
            "/metrics", headers={"Authorization": "Bearer wrong-0123456789-abcdefghij"}
        )
    ).status == 401
    await scrape(client, Authorization=f"Bearer {ADMIN}")
    await scrape(client, Authorization=f"Bearer {SCRAPER}")
    # The probes stay public.
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_readyz_is_503_while_the_server_drains_and_healthz_stays_200(gateway):
    gate = asyncio.Event()
    client = await gateway(ScriptedProvider(["a", "b"], gate=gate, hold_from=1))
    resp = await client.get("/readyz")
    assert (resp.status, await resp.json()) == (200, {"status": "ready"})
    stream = await client.post("/v1/chat/stream", json={"messages": USER})
    await read_until(stream, 2)
    shutdown = asyncio.create_task(client.engine.shutdown(grace=30))
    await asyncio.sleep(0)
    resp = await client.get("/readyz")
    assert (resp.status, await resp.json()) == (503, {"status": "draining"})
    assert resp.headers["Retry-After"] == "1"
    assert (await client.get("/healthz")).status == 200
    gate.set()  # the open stream finishes within the grace period
    await stream.read()
    await asyncio.wait_for(shutdown, 5)
    assert (await client.get("/readyz")).status == 503


async def test_json_logs_a_line_per_stream_end_without_content_unless_asked(gateway, caplog):
    caplog.set_level(logging.INFO, logger="engine.stream")
    client = await gateway(
        log_format="json", metrics=False, keys={"web-app": {"hash": hash_key(CLIENT)}}
    )
    headers = {"Authorization": f"Bearer {CLIENT}"}
    resp = await client.post(
        "/v1/chat/stream",
        json={
            "messages": [{"role": "user", "content": "secret words"}],
            "options": {"max_tokens": 3},
        },
        headers=headers,
    )
    body = await resp.read()
    (record,) = [r for r in caplog.records if getattr(r, "fields", None)]
    line = json.loads(JSONFormatter().format(record))
    sid = json.loads(body.split(b"data: ", 1)[1].split(b"\n", 1)[0])["stream_id"]
    assert line["event"] == "stream_end"
    assert line["level"] == "info" and line["logger"] == "engine.stream"
    assert line["stream_id"] == sid
    assert (line["provider"], line["model"], line["status"], line["reason"]) == (
        "mock",
        "mock-1",
        200,
        "done",
    )
    assert line["output_tokens"] == 3 and line["input_tokens"] > 0
    assert line["tokens_estimated"] is False
    assert line["chunks"] == 3 and line["bytes"] >= len(body)
    assert 0 < line["ttft_s"] <= line["duration_s"]
    assert line["key"] == "web-app"
    text = JSONFormatter().format(record)
    assert "secret" not in text and CLIENT not in text and "content" not in line
    # --log-content: the reply's text too.
    caplog.clear()
    client = await gateway(log_format="json", log_content=True)
    resp = await client.post(
        "/v1/chat/stream",
        json={
            "messages": [{"role": "user", "content": "secret words"}],
            "options": {"max_tokens": 3},
        },
    )
    await resp.read()
    (record,) = [r for r in caplog.records if getattr(r, "fields", None)]
    assert json.loads(JSONFormatter().format(record))["content"] == "You said: se"  # 3 x 4
    assert "key" not in record.fields  # an open gateway: no key


async def test_json_logs_a_line_per_request_from_serve_with_the_key_alias(caplog):
    caplog.set_level(logging.INFO, logger="engine.access")
    config = make_config(port=0, log_format="json", keys={"web-app": {"hash": hash_key(CLIENT)}})
    runner = await start_server(config)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/chat/stream"
            headers = {"Authorization": f"Bearer {CLIENT}"}
            async with session.get(url, params={"q": "secret words"}, headers=headers) as resp:
                await resp.read()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                await resp.read()
        for _ in range(100):  # (written right after the response)
            lines = [r for r in caplog.records if r.name == "engine.access"]
            if len(lines) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    stream, health = (json.loads(JSONFormatter().format(r)) for r in lines)
    assert stream["event"] == "request"
    assert (stream["method"], stream["path"], stream["status"]) == ("GET", "/v1/chat/stream", 200)
    assert stream["key"] == "web-app" and stream["duration_s"] > 0 and stream["bytes"] > 0
    text = JSONFormatter().format(lines[0])
    assert "secret" not in text and CLIENT not in text  # no query string, no key
    assert (health["path"], health["status"]) == ("/healthz", 200) and "key" not in health
