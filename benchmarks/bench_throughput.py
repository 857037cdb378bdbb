"""Throughput: events/s delivered to 1, 50 and 500 concurrent clients, and server CPU per event.

Four servers, each on uvloop and pinned to CPU 0, serve the same payloads (the
mock provider's chunks at interval 0, 16-character tokens, the same JSON bytes
and ``id: <stream>:<n>`` on every event):

* ``native``: ``sse-engine serve`` (GET /v1/chat/stream);
* ``sse-starlette``: EventSourceResponse on Starlette + uvicorn (httptools);
* ``aiohttp-sse``: sse_response on aiohttp;
* ``aiohttp-plain``: a hand-written aiohttp StreamResponse + msgspec (reference);
* ``raw``: an asyncio Protocol writing preformatted events, the ceiling.

The load generator (CPU 1) keeps ``clients`` connections busy with streams
back to back and counts frames over a window after a warm-up; the server's
utime+stime over the same window gives CPU microseconds per event. Rounds are
interleaved (every server at every concurrency, then again), so each ratio is
taken within one round and the ratios' medians are reported.

    python -m benchmarks --only throughput
"""

from __future__ import annotations

from typing import Any

from ._harness import LABELS, SERVERS, fmt_range, loadgen, log, servers, summary

CONCURRENCY = (1, 50, 500)
TOKEN_SIZE = 16
# Chunks per stream: long enough that setting a stream up is a small part of
# the work, short enough that many streams complete and get their totals checked.
MAX_TOKENS = {1: 50_000, 50: 2_000, 500: 400}


def _target(max_tokens: int) -> str:
    return (
        f"/v1/chat/stream?q=benchmark&max_tokens={max_tokens}&token_size={TOKEN_SIZE}&interval_ms=0"
    )


def main(quick: bool = False) -> dict[str, Any]:
    reps = 2 if quick else 4
    warmup, window = (0.5, 1.0) if quick else (0.7, 2.5)
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {
        s: {c: [] for c in CONCURRENCY} for s in SERVERS
    }
    banners: dict[str, str] = {}
    with servers(SERVERS) as running:
        banners = {k: s.banner for k, s in running.items()}
        for rep in range(reps):
            for clients in CONCURRENCY:
                for kind in SERVERS:
                    server = running[kind]
                    max_tokens = MAX_TOKENS[clients]
                    r = loadgen(
                        {
                            "mode": "throughput",
                            "port": server.port,
                            "pid": server.pid,
                            "target": _target(max_tokens),
                            "expected": max_tokens + 2,  # start, chunks, done
                            "clients": clients,
                            "warmup": warmup,
                            "window": window,
                        },
                        timeout=warmup + window + 60,
                    )
                    raw[kind][clients].append(r)
                    log(
                        f"throughput {rep + 1}/{reps} {kind:>13} x{clients:<3}: "
                        f"{r['events_per_s']:>9,.0f} ev/s, "
                        f"{r['cpu_us_per_event'] or 0:5.1f} us/ev, "
                        f"{r['streams_completed']} streams ok, {r['streams_bad']} bad"
                    )
    results: dict[str, Any] = {}
    for kind in SERVERS:
        results[kind] = {}
        for clients in CONCURRENCY:
            runs = raw[kind][clients]
            results[kind][clients] = {
                "events_per_s": summary([r["events_per_s"] for r in runs]),
                "cpu_us_per_event": summary([r["cpu_us_per_event"] for r in runs]),
                "cpu_share": summary([r["server_cpu_s"] / r["seconds"] for r in runs]),
                "streams_completed": sum(r["streams_completed"] for r in runs),
                "streams_bad": sum(r["streams_bad"] for r in runs),
            }
    # Ratios within each round, then their median.
    ratios: dict[str, Any] = {}
    pairs = [(k, "raw") for k in SERVERS if k != "raw"] + [
        ("native", "sse-starlette"),
        ("native", "aiohttp-sse"),
        ("native", "aiohttp-plain"),
    ]
    for a, b in pairs:
        ratios[f"{a}/{b}"] = {
            clients: summary(
                [
                    x["events_per_s"] / y["events_per_s"]
                    for x, y in zip(raw[a][clients], raw[b][clients], strict=True)
                    if y["events_per_s"]
                ]
            )
            for clients in CONCURRENCY
        }
    return {
        "name": "throughput",
        "reps": reps,
        "warmup_s": warmup,
        "window_s": window,
        "token_size": TOKEN_SIZE,
        "max_tokens": MAX_TOKENS,
        "banners": banners,
        "results": results,
        "ratios": ratios,
        "runs": raw,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Median over {r['reps']} interleaved rounds (min-max); each round counts frames over "
        f"{r['window_s']} s after a {r['warmup_s']} s warm-up. Token size {r['token_size']}, "
        f"chunks per stream {r['max_tokens']} (by clients); every completed stream's frame "
        "count was checked.",
        "",
        "| server | clients | events/s | server CPU us/event | server CPU share | "
        "streams ok / bad |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, per in r["results"].items():
        for clients, v in per.items():
            lines.append(
                f"| {LABELS[kind]} | {clients} | {fmt_range(v['events_per_s'])} | "
                f"{fmt_range(v['cpu_us_per_event'], '.2f')} | "
                f"{fmt_range(v['cpu_share'], '.2f')} | "
                f"{v['streams_completed']} / {v['streams_bad']} |"
            )
    lines += ["", "Ratios of events/s, taken within each round (median, min-max):", ""]
    clients_list = list(next(iter(r["ratios"].values())).keys())
    lines.append("| ratio | " + " | ".join(f"{c} clients" for c in clients_list) + " |")
    lines.append("|---|" + "---:|" * len(clients_list))
    for name, per in r["ratios"].items():
        a, b = name.split("/")
        lines.append(
            f"| {a} / {b} | " + " | ".join(fmt_range(per[c], ".2f") for c in clients_list) + " |"
        )
    return "\n".join(lines)


def plot(r: dict[str, Any], outdir: Any) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, per in r["results"].items():
        xs = [int(c) for c in per]
        med = [per[c]["events_per_s"]["median"] for c in per]
        lo = [m - per[c]["events_per_s"]["min"] for c, m in zip(per, med, strict=True)]
        hi = [per[c]["events_per_s"]["max"] - m for c, m in zip(per, med, strict=True)]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[kind])
    ax.set_xscale("log")
    ax.set_xticks([int(c) for c in next(iter(r["results"].values()))])
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("events/s delivered (median, min-max)")
    ax.set_title("Throughput against concurrency (server on one core)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


if __name__ == "__main__":
    import json

    print(json.dumps(main(quick=True)["ratios"], indent=1))
