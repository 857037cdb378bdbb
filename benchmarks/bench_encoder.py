"""Micro-benchmark of the SSE codec on a typical streamed chunk.

Three paths, timed in the same run so their ratios mean something:

- ``encode_json``: ``engine.sse.encode_json(Chunk, id=...)``, msgspec writing
  straight into the frame;
- ``json.dumps``: the obvious stdlib way, an f-string around ``json.dumps(dict)``;
- ``decode``: ``engine.sse.Decoder`` parsing a stream of such frames fed in
  4 KiB reads, as a provider's response body arrives.

Each path runs ``repeats`` times over ``n`` events; the table shows the median
rate with the min-max range. Run it as ``python -m benchmarks.bench_encoder``
(``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from engine.sse import Decoder, encode_json
from engine.wire import Chunk

STREAM_ID = "streamid:123"
READ_SIZE = 4096  # a typical socket read, and aiohttp's default chunk size order


def _chunk() -> Chunk:
    return Chunk(role="assistant", content="0123456789abcdef", model="mock-1", finish_reason=None)


def _chunk_dict() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "0123456789abcdef",
        "model": "mock-1",
        "finish_reason": None,
    }


def _time(run: Callable[[], object], repeats: int) -> list[float]:
    timings = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one repetition only is noise, not signal
    try:
        run()  # warm-up: caches, the encoder's buffer, branch predictors
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            timings.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def _rates(n: int, timings: list[float]) -> dict[str, float]:
    rates = sorted(n / t for t in timings)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


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

    # Both paths must frame the same event, or the comparison is meaningless.
    frame = encode_json(chunk, id=STREAM_ID)
    [ours] = Decoder().feed(frame)
    [theirs] = Decoder().feed(f"id: {STREAM_ID}\ndata: {json.dumps(as_dict)}\n\n".encode())
    assert ours.id == theirs.id == STREAM_ID
    assert msgspec.json.decode(ours.data) == json.loads(theirs.data) == as_dict

    stream = frame * n
    reads = [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def run_decode() -> None:
        decoder = Decoder()
        count = 0
        for read in reads:
            count += len(decoder.feed(read))
        assert count == n

    results: dict[str, Any] = {
        "n_events": n,
        "repeats": repeats,
        "frame_bytes": len(frame),
        "encode_json": _rates(n, _time(run_msgspec, repeats)),
        "json_dumps": _rates(n, _time(run_json, repeats)),
        "decode": _rates(n, _time(run_decode, repeats)),
    }
    results["encode_json_vs_json_dumps"] = (
        results["encode_json"]["median"] / results["json_dumps"]["median"]
    )

    print(f"SSE codec, {n} events x {repeats} runs, {len(frame)}-byte frame (events/s)")
    print(f"{'path':<28}{'median':>12}{'min':>12}{'max':>12}")
    for key, label in [
        ("encode_json", "encode_json (msgspec)"),
        ("json_dumps", "f-string + json.dumps"),
        ("decode", f"Decoder, {READ_SIZE}-byte reads"),
    ]:
        r = results[key]
        print(f"{label:<28}{r['median']:>12,.0f}{r['min']:>12,.0f}{r['max']:>12,.0f}")
    print(f"encode_json / json.dumps: {results['encode_json_vs_json_dumps']:.2f}x")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, for a smoke run")
    main(quick=parser.parse_args().quick)
