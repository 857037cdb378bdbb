"""Concurrency: idle streams held with heartbeats, and the most paced streams that stay stable.

Idle: a fresh server (CPU 0, heartbeat 5 s) gets 1k, 5k and 10k streams that
send their first chunk and then go quiet (the mock at ``interval_ms=60000``);
the load generator (CPU 1) checks each stream got its first frames, that every
one then received a heartbeat, and that none was dropped. Server RSS
(``VmRSS``) before the connections and after a heartbeat period gives KiB per
connection.

Stable: N streams at once of the mock at ``interval_ms=20`` (50 chunks/s each),
N stepping 250, 500, 750, 1000, 1250, 1500, ... up to a bound. A chunk's delay is how
late it arrived past 20 ms after the previous frame of its stream (the mock
sleeps 20 ms after each write, so this is the lag the server adds per chunk,
measured at the client). A level is stable when every stream completes, the
p99 delay is <= 50 ms, and the server would need at most 90% of its core to
hold the full cadence (its CPU share while all streams were open, times the
streams' mean gap / 20 ms): the mock sleeps after each write, so a saturated
server slows every stream a little rather than making single chunks late, which
the per-chunk delay alone would not show (a relay of an independent upstream
would fall further behind with every chunk instead). The
peers serve the same streams at one level, for the per-target delay CDF.

    python -m benchmarks --only concurrency
"""

from __future__ import annotations

import time
from typing import Any

from ._harness import (
    LABELS,
    SERVERS,
    Interactive,
    Server,
    fmt_range,
    loadgen,
    log,
    percentile,
    summary,
)

HEARTBEAT = 5.0
IDLE_TARGET = "/v1/chat/stream?q=idle&max_tokens=3&token_size=16&interval_ms=60000"
IDLE_FIRST_FRAMES = 3  # retry, start, the first chunk; then a minute of silence
INTERVAL_MS = 20
STABLE_P99_MS = 50.0
# The mock sleeps after each write, so a saturated server slows every stream a
# little instead of making single chunks late; a relay fed by an independent
# upstream would fall further behind with every chunk instead. A level counts
# as stable only while the server would have CPU to spare at the full cadence.
MAX_CPU_SHARE = 0.9


def _warm(server: Server) -> None:
    """One short stream first, so RSS counts connections, not lazy imports."""
    loadgen(
        {
            "mode": "throughput",
            "port": server.port,
            "pid": server.pid,
            "target": "/v1/chat/stream?q=warm&max_tokens=50&token_size=16&interval_ms=0",
            "expected": 53,
            "clients": 20,
            "warmup": 0.3,
            "window": 0.3,
        },
        timeout=30,
    )


def idle(kind: str, clients: int) -> dict[str, Any]:
    with Server(kind, heartbeat=HEARTBEAT) as server:
        _warm(server)
        time.sleep(0.5)
        before = server.rss_kib()
        gen = Interactive(
            {
                "mode": "idle",
                "port": server.port,
                "target": IDLE_TARGET,
                "clients": clients,
                "first_frames": IDLE_FIRST_FRAMES,
                "timeout": 50,
            }
        )
        try:
            ready = gen.read_json(timeout=110)
            held = server.rss_kib()
            time.sleep(HEARTBEAT + 2.0)  # every stream is due a heartbeat by now
            after = server.rss_kib()
            gen.release()
            result = gen.read_json(timeout=30)
        finally:
            gen.close()
    peak = max(held, after)
    n = max(1, result["ready"])
    return {
        "clients": clients,
        "rss_before_kib": before,
        "rss_after_kib": peak,
        "kib_per_conn": (peak - before) / n,
        "connect_s": ready["connect_s"],
        **result,
    }


def paced(server: Server, clients: int, chunks: int) -> dict[str, Any]:
    r = loadgen(
        {
            "mode": "paced",
            "port": server.port,
            "target": (
                f"/v1/chat/stream?q=paced&max_tokens={chunks}&token_size=16"
                f"&interval_ms={INTERVAL_MS}"
            ),
            "expected": chunks + 3,
            "clients": clients,
            "interval_ms": INTERVAL_MS,
            "pid": server.pid,
            "timeout": chunks * INTERVAL_MS / 1000 * 4 + 30,
        },
        timeout=chunks * INTERVAL_MS / 1000 * 4 + 90,
    )
    delays = sorted(r.pop("delays_ms"))
    r["p50_ms"] = percentile(delays, 50)
    r["p99_ms"] = percentile(delays, 99)
    r["max_ms"] = delays[-1] if delays else float("nan")
    r["samples"] = len(delays)
    gaps = sorted(r.pop("mean_gap_ms"))
    r["gap_p50_ms"] = percentile(gaps, 50)
    r["gap_p99_ms"] = percentile(gaps, 99)
    # The CPU the server would need to hold the full cadence: what it used while
    # all streams were open, scaled by how much it slowed them down.
    r["cpu_at_cadence"] = r["server_cpu_share"] * max(1.0, r["gap_p50_ms"] / INTERVAL_MS)
    r["stable"] = (
        r["complete"] == clients
        and not r["connect_errors"]
        and not r["timed_out"]
        and r["p99_ms"] <= STABLE_P99_MS
        and r["cpu_at_cadence"] <= MAX_CPU_SHARE
    )
    # Keep a thinned CDF for the plot (every k-th sorted delay).
    step = max(1, len(delays) // 400)
    r["cdf_ms"] = delays[::step]
    return r


def main(quick: bool = False) -> dict[str, Any]:
    idle_levels = (1000,) if quick else (1000, 5000, 10000)
    idle_kinds = ("native", "raw") if quick else SERVERS
    ladder = (250, 1000) if quick else (250, 500, 750, 1000, 1250, 1500, 2000, 3000, 4000)
    chunks = 50 if quick else 100  # per stream: 1 s or 2 s at 20 ms
    peer_level = 500 if quick else 1000

    idle_results: dict[str, list[dict[str, Any]]] = {}
    for kind in idle_kinds:
        idle_results[kind] = []
        for level in idle_levels:
            try:
                r = idle(kind, level)
            except Exception as exc:  # report it and go on with the next
                log(f"idle {kind} x{level}: FAILED {exc}")
                idle_results[kind].append({"clients": level, "error": str(exc)[:300]})
                continue
            idle_results[kind].append(r)
            log(
                f"idle {kind:>13} x{level:<5}: {r['kib_per_conn']:6.2f} KiB/conn, "
                f"ready {r['ready']}, heartbeat {r['got_heartbeat']}, open {r['still_open']}"
            )

    stable: dict[str, Any] = {"ladder": [], "peers": {}}
    with Server("native") as server:
        _warm(server)
        for level in ladder:
            r = paced(server, level, chunks)
            stable["ladder"].append(r)
            log(
                f"paced native x{level:<5}: complete {r['complete']}/{level}, "
                f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms, "
                f"gap p50 {r['gap_p50_ms']:.2f} ms, cpu {r['server_cpu_share']:.2f}"
                f" (at cadence {r['cpu_at_cadence']:.2f})"
                f" -> {'stable' if r['stable'] else 'UNSTABLE'}"
            )
            if not r["stable"]:
                break
            time.sleep(1.0)
    best = [r["clients"] for r in stable["ladder"] if r["stable"]]
    stable["max_stable"] = max(best) if best else 0
    stable["peer_level"] = peer_level
    for kind in SERVERS:
        with Server(kind) as server:
            _warm(server)
            r = paced(server, peer_level, chunks)
        stable["peers"][kind] = r
        log(
            f"paced {kind:>13} x{peer_level}: complete {r['complete']}/{peer_level}, "
            f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms, "
            f"cpu {r['server_cpu_share']:.2f} (at cadence {r['cpu_at_cadence']:.2f})"
        )
    return {
        "name": "concurrency",
        "heartbeat_s": HEARTBEAT,
        "interval_ms": INTERVAL_MS,
        "chunks_per_stream": chunks,
        "idle": idle_results,
        "stable": stable,
        "idle_summary": {
            kind: summary([r["kib_per_conn"] for r in rows if "kib_per_conn" in r])
            for kind, rows in idle_results.items()
        },
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Idle streams: heartbeat every {r['heartbeat_s']:g} s; RSS measured before connecting "
        "and after a heartbeat period (peak of the two readings after connecting).",
        "",
        "| server | streams | ready | got a heartbeat | still open | RSS before MiB | "
        "RSS after MiB | KiB per stream | connect s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in r["idle"].items():
        for x in rows:
            if "error" in x:
                lines.append(f"| {LABELS[kind]} | {x['clients']} | failed: {x['error']} |")
                continue
            lines.append(
                f"| {LABELS[kind]} | {x['clients']} | {x['ready']} | {x['got_heartbeat']} | "
                f"{x['still_open']} | {x['rss_before_kib'] / 1024:.1f} | "
                f"{x['rss_after_kib'] / 1024:.1f} | {x['kib_per_conn']:.2f} | "
                f"{x['connect_s']:.1f} |"
            )
    st = r["stable"]
    lines += [
        "",
        f"Paced streams: the mock at {r['interval_ms']} ms, {r['chunks_per_stream']} chunks per "
        "stream, all started at once (connections opened 256 at a time). Delay = lateness past "
        f"{r['interval_ms']} ms after the stream's previous frame, at the client. Stable = all "
        f"complete, p99 <= {STABLE_P99_MS:g} ms and the CPU needed at full cadence <= "
        f"{MAX_CPU_SHARE:.0%} of the core. "
        f"**Largest stable level for sse-engine: {st['max_stable']} streams.**",
        "",
        "| server | streams | complete | delay p50 ms | p99 ms | max ms | "
        "mean gap p50 / p99 ms | server CPU share | CPU at cadence | stable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [("native", x) for x in st["ladder"]] + list(st["peers"].items())
    for kind, x in rows:
        lines.append(
            f"| {LABELS[kind]} | {x['clients']} | {x['complete']} | {x['p50_ms']:.2f} | "
            f"{x['p99_ms']:.2f} | {x['max_ms']:.1f} | "
            f"{x['gap_p50_ms']:.2f} / {x['gap_p99_ms']:.2f} | {x['server_cpu_share']:.2f} | "
            f"{x['cpu_at_cadence']:.2f} | "
            f"{'yes' if x['stable'] else 'no'} |"
        )
    summ = r["idle_summary"]
    lines += [
        "",
        "KiB per idle stream across levels (median, min-max): "
        + "; ".join(f"{LABELS[k]} {fmt_range(v, '.2f')}" for k, v in summ.items()),
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], outdir: Any) -> list[str]:
    import matplotlib.pyplot as plt

    st = r["stable"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, x in st["peers"].items():
        cdf = x["cdf_ms"]
        if not cdf:
            continue
        ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
        ax.plot([max(v, 1e-3) for v in cdf], ys, label=f"{LABELS[kind]} (p99 {x['p99_ms']:.1f})")
    ax.set_xscale("log")
    ax.set_xlabel("chunk delay past the 20 ms cadence, ms (log)")
    ax.set_ylabel("fraction of chunks")
    ax.set_title(f"Per-chunk delay CDF, {st['peer_level']} paced streams, server on one core")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path1 = outdir / "latency_cdf.png"
    fig.savefig(path1, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x in st["ladder"]:
        cdf = x["cdf_ms"]
        if cdf:
            ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
            ax.plot([max(v, 1e-3) for v in cdf], ys, label=f"{x['clients']} streams")
    ax.axvline(STABLE_P99_MS, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("chunk delay past the 20 ms cadence, ms (log)")
    ax.set_ylabel("fraction of chunks")
    ax.set_title("sse-engine: per-chunk delay CDF by number of paced streams")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path2 = outdir / "concurrency_cdf.png"
    fig.savefig(path2, dpi=110)
    plt.close(fig)
    return [path1.name, path2.name]
