"""Micro-benchmark of the SSE codec on a typical streamed chunk.

Six paths, timed in the same run on the same chunk and the same id, so their
ratios mean something. Every encoding path serialises the chunk inside the
timed loop:

- ``encode_json``: ``engine.sse.encode_json(Chunk, id=...)``, msgspec writing
  straight into the frame;
- ``json.dumps``: the obvious stdlib way, an f-string around ``json.dumps(dict)``;
- ``sse-starlette``: what a sse-starlette user writes,
  ``sse_starlette.sse.ServerSentEvent(data=json.dumps(dict), id=...).encode()``
  (its ``JSONServerSentEvent`` would call ``json.dumps`` itself, with compact
  separators; we time the plain class fed the user's own ``json.dumps``);
- ``aiohttp-sse``: ``json.dumps(dict)`` then ``EventSourceResponse.send(data,
  id=...)``. aiohttp-sse has no pure framing helper: ``send()`` builds the
  frame in an ``io.StringIO`` and awaits ``self.write(frame)`` inside
  ``asyncio.timeout(send_timeout)``. We call that real ``send()`` on an
  unprepared response whose ``write`` is replaced (on the instance) by a no-op
  coroutine, awaited in a loop inside one ``run_until_complete``: this times
  aiohttp-sse's own code rather than a re-implementation of it, and leaves out
  only the socket write. Since the write never suspends, the event loop is not
  involved per event; what remains beyond the framing is a coroutine call and
  ``asyncio.timeout``. The headline row uses ``send_timeout=None`` (the closest
  to pure framing, and the most favourable to aiohttp-sse); a second row uses
  the default ``send_timeout`` (120 s), whose ``asyncio.timeout`` schedules and
  cancels a timer on every event, as every aiohttp-sse user with default
  settings pays;
- ``decode``: ``engine.sse.Decoder`` parsing a stream of our frames fed in
  4 KiB reads, as a provider's response body arrives.

Before timing, each encoding path's frame is fed to ``engine.sse.Decoder``,
which must find one event with the same id and data. The peers' frames differ
in bytes (``json.dumps``'s default ``", "`` separators, ``\\r\\n`` line ends),
not in meaning. sse-starlette and aiohttp-sse come with the ``bench`` extra; a
path whose import fails is reported as skipped with the reason.

Each path runs ``repeats`` times over ``n`` events, the paths interleaved round
by round (the machine is shared and its load drifts); the table shows the
median rate with the min-max range, and ``encode_json / x`` both as the ratio of
the medians and as the median (min-max) of the per-round ratios.
Run it as ``python -m benchmarks.bench_encoder`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine.sse import Decoder, encode_json
from engine.wire import Chunk

STREAM_ID = "streamid:123"
READ_SIZE = 4096  # a typical socket read, and aiohttp's default chunk size order

# key -> table label; the order of the printed and rendered tables.
PATHS = {
    "encode_json": "encode_json (msgspec)",
    "json_dumps": "f-string + json.dumps",
    "sse_starlette": "sse-starlette ServerSentEvent.encode",
    "aiohttp_sse": "aiohttp-sse send(), send_timeout=None",
    "aiohttp_sse_default_timeout": "aiohttp-sse send(), default send_timeout",
    "decode": f"Decoder, {READ_SIZE}-byte reads",
}
# encode_json / x, reported for these x.
RATIOS = {
    "json_dumps": "json.dumps",
    "sse_starlette": "sse-starlette",
    "aiohttp_sse": "aiohttp-sse",
}


def _chunk() -> Chunk:
    return Chunk(role="assistant", content="0123456789abcdef", model="mock-1", finish_reason=None)


def _chunk_dict() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "0123456789abcdef",
        "model": "mock-1",
        "finish_reason": None,
    }


def _time(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time every path ``repeats`` times, interleaved: round r runs each path once.

    The machine is shared, so load drifts over seconds; interleaving spreads a
    busy spell over all paths instead of landing it on whichever ran then, and
    makes the per-round ratios compare runs taken moments apart.
    """
    timings: dict[str, list[float]] = {key: [] for key in runs}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one repetition only is noise, not signal
    try:
        for run in runs.values():
            run()  # warm-up: caches, the encoder's buffer, branch predictors
        for _ in range(repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                timings[key].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def _rates(n: int, timings: list[float]) -> dict[str, float]:
    rates = sorted(n / t for t in timings)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


def _check(frame: bytes, as_dict: dict[str, Any]) -> None:
    """The frame must decode, with our Decoder, to one event with our id and data."""
    [event] = Decoder().feed(frame)
    assert event.id == STREAM_ID, (event.id, frame)
    assert json.loads(event.data) == as_dict, (event.data, frame)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _sse_starlette_path(n: int, as_dict: dict[str, Any]) -> tuple[Callable[[], None], bytes]:
    from sse_starlette.sse import ServerSentEvent

    def run() -> None:
        for _ in range(n):
            ServerSentEvent(data=json.dumps(as_dict), id=STREAM_ID).encode()

    return run, ServerSentEvent(data=json.dumps(as_dict), id=STREAM_ID).encode()


def _aiohttp_sse_path(
    n: int, as_dict: dict[str, Any], loop: asyncio.AbstractEventLoop, *, default_timeout: bool
) -> tuple[Callable[[], None], bytes]:
    from aiohttp_sse import EventSourceResponse

    if default_timeout:
        resp = EventSourceResponse()
    else:
        try:
            resp = EventSourceResponse(send_timeout=None)
        except TypeError:  # an aiohttp-sse without send_timeout
            resp = EventSourceResponse()
    written: list[bytes] = []

    async def capture(data: bytes) -> None:
        written.append(bytes(data))

    async def discard(data: bytes) -> None:
        pass

    async def send_n(count: int) -> None:
        send = resp.send
        for _ in range(count):
            await send(json.dumps(as_dict), id=STREAM_ID)

    # StreamResponse.write is a plain method, so an instance attribute shadows it.
    resp.write = capture  # type: ignore[method-assign]
    loop.run_until_complete(send_n(1))
    resp.write = discard  # type: ignore[method-assign]
    [frame] = written

    def run() -> None:
        loop.run_until_complete(send_n(n))

    return run, frame


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print a table, and return the numbers (events per second)."""
    n = 5_000 if quick else 50_000
    repeats = 5 if quick else 7

    chunk = _chunk()
    as_dict = _chunk_dict()

    def run_msgspec() -> None:
        for _ in range(n):
            encode_json(chunk, id=STREAM_ID)

    def run_json() -> None:
        for _ in range(n):
            f"id: {STREAM_ID}\ndata: {json.dumps(as_dict)}\n\n".encode()

    # Every path must frame the same event, or the comparison is meaningless.
    frame = encode_json(chunk, id=STREAM_ID)
    _check(frame, as_dict)
    runs: dict[str, Callable[[], None]] = {"encode_json": run_msgspec}
    frames: dict[str, int] = {"encode_json": len(frame)}
    json_frame = f"id: {STREAM_ID}\ndata: {json.dumps(as_dict)}\n\n".encode()
    _check(json_frame, as_dict)
    runs["json_dumps"] = run_json
    frames["json_dumps"] = len(json_frame)

    skipped: dict[str, str] = {}
    loop = asyncio.new_event_loop()
    peers: dict[str, Callable[[], tuple[Callable[[], None], bytes]]] = {
        "sse_starlette": lambda: _sse_starlette_path(n, as_dict),
        "aiohttp_sse": lambda: _aiohttp_sse_path(n, as_dict, loop, default_timeout=False),
        "aiohttp_sse_default_timeout": lambda: _aiohttp_sse_path(
            n, as_dict, loop, default_timeout=True
        ),
    }
    for key, build in peers.items():
        try:
            run, peer_frame = build()
        except ImportError as exc:  # the bench extra is not installed
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        _check(peer_frame, as_dict)
        runs[key] = run
        frames[key] = len(peer_frame)

    stream = frame * n
    reads = [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def run_decode() -> None:
        decoder = Decoder()
        count = 0
        for read in reads:
            count += len(decoder.feed(read))
        assert count == n

    runs["decode"] = run_decode

    results: dict[str, Any] = {
        "n_events": n,
        "repeats": repeats,
        "frame_bytes": len(frame),
        "versions": {
            "sse-starlette": _version("sse-starlette"),
            "aiohttp-sse": _version("aiohttp-sse"),
        },
        "frame_bytes_by_path": frames,
    }
    try:
        timings = _time(runs, repeats)
    finally:
        loop.close()
    for key, ts in timings.items():
        results[key] = _rates(n, ts)
    for key, reason in skipped.items():
        results[key] = {"skipped": reason}
    # encode_json / x: the ratio of the medians, and its spread over the rounds
    # (each round's ratio is between runs taken moments apart).
    results["encode_json_vs_per_round"] = {}
    for key in RATIOS:
        if key not in timings:
            results[f"encode_json_vs_{key}"] = None
            continue
        results[f"encode_json_vs_{key}"] = results["encode_json"]["median"] / results[key]["median"]
        per_round = sorted(t / o for o, t in zip(timings["encode_json"], timings[key], strict=True))
        results["encode_json_vs_per_round"][key] = {
            "median": statistics.median(per_round),
            "min": per_round[0],
            "max": per_round[-1],
        }

    print(f"SSE codec, {n} events x {repeats} runs, {len(frame)}-byte frame (events/s)")
    print(f"{'path':<42}{'median':>12}{'min':>12}{'max':>12}{'bytes':>7}")
    for key, label in PATHS.items():
        r = results[key]
        if "skipped" in r:
            print(f"{label:<42}  skipped: {r['skipped']}")
            continue
        size = frames.get(key, len(frame))
        print(f"{label:<42}{r['median']:>12,.0f}{r['min']:>12,.0f}{r['max']:>12,.0f}{size:>7}")
    for key, label in RATIOS.items():
        v = results[f"encode_json_vs_{key}"]
        if v is None:
            print(f"encode_json / {label}: skipped")
            continue
        pr = results["encode_json_vs_per_round"][key]
        print(
            f"encode_json / {label}: {v:.2f}x "
            f"(per round: median {pr['median']:.2f}x, {pr['min']:.2f}-{pr['max']:.2f})"
        )
    return results


def markdown(r: dict[str, Any]) -> str:
    """The RESULTS.md section body (``benchmarks/__main__.py`` calls this)."""
    v = r.get("versions", {})
    lines = [
        f"{r['n_events']} events x {r['repeats']} runs per path, one chunk and id for all; "
        "each encoding path includes the JSON serialisation. Peers: sse-starlette "
        f"{v.get('sse-starlette', '?')}, aiohttp-sse {v.get('aiohttp-sse', '?')} (aiohttp-sse's "
        "real `send()` with a no-op `write`; see the module docstring).",
        "",
        "| path | events/s median (min-max) | frame bytes |",
        "|---|---|---|",
    ]
    sizes = r.get("frame_bytes_by_path", {})
    for key, label in PATHS.items():
        x = r.get(key)
        if x is None:
            continue
        if "skipped" in x:
            lines.append(f"| {label} | skipped: {x['skipped']} | |")
            continue
        lines.append(
            f"| {label} | {x['median']:,.0f} ({x['min']:,.0f}-{x['max']:,.0f}) "
            f"| {sizes.get(key, r['frame_bytes'] if key == 'decode' else '')} |"
        )
    lines += [
        "",
        "| ratio | of the medians | per round: median (min-max) |",
        "|---|---|---|",
    ]
    per_round = r.get("encode_json_vs_per_round", {})
    for key, label in RATIOS.items():
        ratio = r.get(f"encode_json_vs_{key}")
        pr = per_round.get(key)
        lines.append(
            f"| encode_json / {label} | {'skipped' if ratio is None else f'{ratio:.2f}x'} | "
            + (f"{pr['median']:.2f}x ({pr['min']:.2f}-{pr['max']:.2f})" if pr else "")
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, for a smoke run")
    main(quick=parser.parse_args().quick)
