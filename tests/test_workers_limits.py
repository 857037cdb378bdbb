"""A key's limits on a real ``serve --workers 2``: the workers together admit the limit.

Without ``limits_url`` each worker enforces its part (3 requests a minute:
2 on worker 0, 1 on worker 1); with it both count in one real Redis against
the whole limit. Either way the tree admits exactly the limit, whichever
worker each connection reaches. Requests go through sessions pinned to each
worker (tests/test_workers.py's ``on_worker``) so that both are exercised.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.test_memory_contract import server_url
from tests.test_workers import ALICE, auth, body, on_worker, pytestmark, tree  # noqa: F401


async def spend(url: str, slot: int, count: int) -> list[tuple[int, dict[str, str], dict]]:
    """``count`` requests on worker ``slot``: (status, rate headers, JSON or {})."""
    session = await on_worker(url, slot)
    answers = []
    try:
        for _ in range(count):
            async with session.post(f"{url}/v1/chat", json=body(1)) as resp:
                payload = await resp.json() if resp.status != 200 else {}
                rates = {k: v for k, v in resp.headers.items() if k.startswith("x-ratelimit")}
                answers.append((resp.status, rates, payload))
        async with session.get(f"{url}/v1/key") as resp:
            answers.append((resp.status, {}, await resp.json()))
    finally:
        await session.close()
    return answers


def keys_file(tmp, alias: str, policy: str, extra: str = "") -> str:
    path = tmp / "keys.toml"
    path.write_text(f'{extra}\n[keys.{alias}]\nkey = "{ALICE}"\n{policy}\n')
    return str(path)


async def test_without_redis_the_workers_admit_their_parts_which_add_up_to_the_limit(tmp_path):
    with tree(tmp_path, "--config", keys_file(tmp_path, "alice", "rpm = 3")) as running:
        first = await spend(running.url, 0, 4)
        second = await spend(running.url, 1, 3)
    statuses = [status for status, _, _ in first[:-1] + second[:-1]]
    assert statuses.count(200) == 3 and statuses.count(429) == 4
    assert [s for s, _, _ in first[:-1]] == [200, 200, 429, 429]
    assert [s for s, _, _ in second[:-1]] == [200, 429, 429]
    assert {h["x-ratelimit-limit-requests"] for _, h, _ in first[:-1]} == {"2"}
    assert {h["x-ratelimit-limit-requests"] for _, h, _ in second[:-1]} == {"1"}
    assert "split across 2 workers" in first[2][2]["message"]
    key_view = first[-1][2]
    assert key_view["limits"]["rpm"] == 3 and key_view["workers"] == 2
    assert key_view["worker_limits"]["rpm"] == 2 and key_view["remaining"] == {"rpm": 0}


async def test_a_limit_below_one_per_worker_is_refused_there_with_the_fix_named(tmp_path):
    with tree(tmp_path, "--config", keys_file(tmp_path, "alice", "rpm = 1")) as running:
        first = await spend(running.url, 0, 2)
        second = await spend(running.url, 1, 2)
        log = running.log()
    assert [s for s, _, _ in first[:-1]] == [200, 429]
    assert [s for s, _, _ in second[:-1]] == [429, 429]
    message = second[0][2]["message"]
    assert "split across the gateway's 2 workers" in message and "SSE_ENGINE_LIMITS_URL" in message
    assert "rpm 1 is less than one per worker" in log


async def test_with_redis_counters_both_workers_count_against_the_whole_limit(tmp_path):
    alias = f"w{uuid.uuid4().hex[:12]}"  # fresh counters in the shared Redis
    config = keys_file(tmp_path, alias, "rpm = 3", f'limits_url = "{server_url("redis")}"')
    with tree(tmp_path, "--config", config) as running:
        first = await spend(running.url, 0, 2)
        second = await spend(running.url, 1, 3)
    statuses = [status for status, _, _ in first[:-1] + second[:-1]]
    assert statuses == [200, 200, 200, 429, 429]
    limits = {h["x-ratelimit-limit-requests"] for _, h, _ in first[:-1] + second[:-1]}
    assert limits == {"3"}
    assert "workers" not in second[-1][2] and second[-1][2]["remaining"] == {"rpm": 0}


async def test_the_gateway_wide_stream_cap_holds_across_the_workers(tmp_path):
    # --max-streams 3: worker 0 relays 2 at most, worker 1 one.
    with tree(tmp_path, "--max-streams", "3") as running:
        sessions = [await on_worker(running.url, slot, {}) for slot in (0, 0, 0, 1, 1, 1)]
        try:
            opened = [
                await session.post(f"{running.url}/v1/chat/stream", json=body(400, 20))
                for session in sessions
            ]
            statuses = [resp.status for resp in opened]
            for resp in opened:
                resp.close()
            await asyncio.sleep(0)
        finally:
            for session in sessions:
                await session.close()
    assert statuses == [200, 200, 503, 200, 503, 503]
