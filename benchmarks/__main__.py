"""Run every benchmark and regenerate benchmarks/RESULTS.md and the plots.

    python -m benchmarks [--quick] [--only NAME[,NAME...]]

Names: encoder, throughput, latency, concurrency, features, memory. ``--only`` reruns
some and keeps the other sections from the last run (benchmarks/results.json).
A benchmark that is missing or fails is reported in RESULTS.md and the run
goes on. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import sys
import time
import traceback
from typing import Any

from ._harness import BENCH_DIR, LABELS, log, machine, raise_nofile
from ._soak_report import section_of

BENCHES = {
    "encoder": "benchmarks.bench_encoder",
    "throughput": "benchmarks.bench_throughput",
    "latency": "benchmarks.bench_latency",
    "concurrency": "benchmarks.bench_concurrency",
    "features": "benchmarks.bench_features",
    "memory": "benchmarks.bench_memory",
}
TITLES = {
    "encoder": "Encoder (events/s, in process)",
    "throughput": "Throughput: events/s to 1, 50 and 500 clients",
    "latency": "Added chunk latency through the gateway (relay of a fake OpenAI upstream)",
    "concurrency": "Concurrency: idle streams and stable relayed streams",
    "features": "Relay CPU per chunk by feature (log, metrics, keys) beside an aiohttp relay",
    "memory": "Conversation memory (operations/s)",
}
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
NOTES_MD = BENCH_DIR / "NOTES.md"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_one(name: str, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    out = io.StringIO()
    try:
        module = importlib.import_module(BENCHES[name])
        with contextlib.redirect_stdout(out):
            result = module.main(quick=quick)
        status = "ok"
        error = None
    except Exception as exc:  # report and go on
        result = None
        status = "failed"
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log(f"{name}: FAILED: {error}")
        log(traceback.format_exc(limit=5))
    return {
        "status": status,
        "error": error,
        "seconds": round(time.monotonic() - started, 1),
        "printed": out.getvalue(),
        "result": _jsonable(result),
    }


# -- rendering -------------------------------------------------------------------


def _cell(v: Any) -> str:
    if isinstance(v, dict) and "median" in v:
        med, lo, hi = v.get("median"), v.get("min"), v.get("max")
        if med is None:
            return "n/a"
        spec = ",.0f" if abs(med) >= 100 else ".3g"
        return f"{format(med, spec)} ({format(lo, spec)}-{format(hi, spec)})"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _generic(result: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(result, dict) and not ("median" in result and prefix):
        for k, v in result.items():
            rows += _generic(v, f"{prefix}{k}" if not prefix else f"{prefix} / {k}")
    elif isinstance(result, list) and len(result) > 20:
        rows.append((prefix, f"({len(result)} values)"))
    else:
        rows.append((prefix, _cell(result)))
    return rows


def render_section(name: str, entry: dict[str, Any]) -> str:
    parts = [f"## {TITLES[name]}", ""]
    parts.append(
        f"`{BENCHES[name]}` — {entry['status']}, {entry['seconds']} s"
        + (" (quick)" if entry.get("quick") else "")
    )
    parts.append("")
    if entry["status"] != "ok":
        parts += ["**Not measured in this run:**", "", "```", entry["error"] or "", "```", ""]
        return "\n".join(parts)
    module = importlib.import_module(BENCHES[name])
    if hasattr(module, "markdown"):
        parts.append(module.markdown(entry["result"]))
    else:
        parts += ["| measure | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in _generic(entry["result"])]
    if entry["printed"].strip():
        parts += ["", "Printed by the benchmark:", "", "```", entry["printed"].rstrip(), "```"]
    parts.append("")
    return "\n".join(parts)


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or str(p) not in d:
            return None
        d = d[str(p)]
    return d


def targets(sections: dict[str, Any]) -> list[str]:
    """The issue's targets against this run's numbers."""
    tp = _get(sections, "throughput", "result")
    conc = _get(sections, "concurrency", "result")
    lat = _get(sections, "latency", "result")
    rows = ["| target | measured | met |", "|---|---|---|"]

    def ratio(a: str, b: str, c: int, goal: float) -> None:
        v = _get(tp, "ratios", f"{a}/{b}", c)
        if v is None:
            rows.append(f"| {a}/{b} at {c} clients >= {goal}x | not measured | ? |")
            return
        med = v["median"]
        rows.append(
            f"| events/s {a} / {b} at {c} clients >= {goal}x | {med:.2f}x "
            f"({v['min']:.2f}-{v['max']:.2f}) | {'yes' if med >= goal else 'no'} |"
        )

    for c in (50, 500):
        ratio("native", "raw", c, 0.7)
        ratio("native", "sse-starlette", c, 3.0)
        ratio("native", "aiohttp-sse", c, 2.5)
    idle = _get(conc, "idle", "native")
    at10k = [r for r in idle or [] if r.get("clients") == 10000 and "kib_per_conn" in r]
    if at10k:
        r = at10k[0]
        ok = r["kib_per_conn"] <= 12 and r["still_open"] == 10000
        rows.append(
            f"| 10,000 idle streams, <= 12 KiB each | {r['kib_per_conn']:.2f} KiB, "
            f"{r['still_open']} open, {r['got_heartbeat']} got heartbeats | "
            f"{'yes' if ok else 'no'} |"
        )
    else:
        rows.append("| 10,000 idle streams, <= 12 KiB each | not measured | ? |")
    relay = _get(conc, "relay")
    goal = "| >= 1,000 concurrent relayed streams stable (all complete, p99 <= 50 ms) |"
    if not isinstance(relay, dict) or relay.get("max_stable") is None:
        rows.append(f"{goal} not measured by the relay ladder | ? |")
    else:
        best, limit, stop = relay["max_stable"], relay.get("limit"), relay.get("stopped_at")
        at = [x for x in relay.get("levels", []) if x.get("streams") == stop]
        share = at[0].get("gateway_share") if at else None
        rate = at[0].get("offered_per_s") if at else None
        p99 = _get(at[0], "relayed", "p99") if at else None
        used = (
            f"; the gateway there used {share:.2f} of its core at {rate:,.0f} chunks/s"
            if share is not None and rate is not None
            else ""
        )
        if limit == "bound":
            why, met = f"every level up to {relay.get('bound')}", "yes" if best >= 1000 else "no"
        elif limit == "client":
            why = f"at {stop} the fake + client core (CPU 1) could not offer the load{used}"
            met = "yes" if best >= 1000 else "? (CPU 1 limit)"
        else:
            why = f"unstable at {stop}" + ("" if p99 is None else f": gateway p99 {p99:,.1f} ms")
            why, met = why + used, "yes" if best >= 1000 else "no"
        rows.append(f"{goal} {best} streams ({why}) | {met} |")
    for streams, goal in (("100", 0.6), ("1000", 5.0)):
        v = _get(lat, streams, "added_p99")  # median (min-max) over rounds
        rows.append(
            f"| added p99 latency at {streams} streams <= {goal} ms | "
            + (
                f"{v['median']:.3f} ms ({v['min']:.3f}-{v['max']:.3f}) | "
                f"{'yes' if v['median'] <= goal else 'no'} |"
                if isinstance(v, dict) and v.get("median") is not None
                else "not measured | ? |"
            )
        )
    v = _get(lat, "ttfb", "added")
    d, g = _get(lat, "ttfb", "direct"), _get(lat, "ttfb", "gateway")
    rows.append(
        "| time to first byte adds <= 1.5 ms at one stream | "
        + (
            f"{v:.3f} ms (medians: gateway {g['median']:.3f}, direct {d['median']:.3f}) | "
            f"{'yes' if v <= 1.5 else 'no'} |"
            if v is not None and d and g
            else "not measured by bench_latency | ? |"
        )
    )
    return rows


def _band(v: Any, fmt: str = ".2f") -> str:
    """``median (min-max)`` of a summary dict."""
    return f"{v['median']:{fmt}} ({v['min']:{fmt}}-{v['max']:{fmt}})"


def targets17(sections: dict[str, Any]) -> list[str]:
    """Issue 17's targets (performance at the floor) against this run's numbers."""
    conc = _get(sections, "concurrency", "result")
    feat = _get(sections, "features", "result")
    lat = _get(sections, "latency", "result")
    rows = ["| target | measured | ratio | met |", "|---|---|---:|---|"]
    ratios = _get(feat, "shares", "us_per_chunk") or {}
    for label, key, config in (
        ("native route", "all on / aiohttp relay", "all on"),
        ("completions route", "all on, completions / aiohttp relay", "all on, completions"),
    ):
        r, us = ratios.get(key), _get(feat, "configs", config, "us_per_chunk")
        yard = _get(feat, "configs", "aiohttp relay", "us_per_chunk")
        if not r or not us or not yard:
            rows.append(f"| relay CPU per chunk, {label} <= aiohttp relay | not measured | | ? |")
            continue
        rows.append(
            f"| relay CPU per chunk, {label}, log+metrics+keys on <= aiohttp passthrough relay | "
            f"{_band(us, '.1f')} vs {_band(yard, '.1f')} us | {_band(r)} | "
            f"{'yes' if r['median'] <= 1 else 'no'} |"
        )
    parse = ratios.get("all on, completions / parsing relay")
    if parse:
        rows.append(
            "| (proof) completions route vs an aiohttp relay that parses each event, same run | "
            f"reading the stream alone is {_band(ratios['parsing / aiohttp relay'])}x the "
            f"passthrough | {_band(parse)} | n/a |"
        )
    relay = _get(conc, "relay")
    if isinstance(relay, dict) and relay.get("max_stable") is not None:
        peers = {
            "completions": "completions route",
            "aiohttp": "aiohttp relay",
            "floor": "raw relay floor",
        }
        beside = ", ".join(
            f"{label} {relay[k]['max_stable']}"
            for k, label in peers.items()
            if isinstance(relay.get(k), dict) and relay[k].get("max_stable") is not None
        )
        best = relay["max_stable"]
        rows.append(
            f"| >= 1,000 relayed streams stable on one core (native route, log and metrics on) | "
            f"{best} (beside it: {beside}; first unstable {relay.get('stopped_at')}, limit: "
            f"{relay.get('limit')}) | {best / 1000:.2f} | {'yes' if best >= 1000 else 'no'} |"
        )
    v = _get(lat, "1000", "added_p99")
    if isinstance(v, dict) and v.get("median") is not None:
        rows.append(
            f"| added p99 <= 5 ms at 1,000 relayed streams | {_band(v, '.1f')} ms | "
            f"{v['median'] / 5:.2f} | {'yes' if v['median'] <= 5 else 'no'} |"
        )
    checks = _get(conc, "idle_checks") or {}
    for x in checks.get("vs_plain", []):
        if x["clients"] != 10000:
            continue
        ok = x["native_kib"] <= x["plain_kib"] and x["held"]
        rows.append(
            f"| idle native stream (log and metrics on) <= plain aiohttp StreamResponse, 10,000 "
            f"streams | {x['native_kib']:.2f} vs {x['plain_kib']:.2f} KiB "
            f"({'all held' if x['held'] else 'NOT all held'}) | "
            f"{x['native_kib'] / x['plain_kib']:.3f} | {'yes' if ok else 'no'} |"
        )
        rows.append(
            f"| (stretch) idle native stream <= 8 KiB | {x['native_kib']:.2f} KiB | "
            f"{x['native_kib'] / 8:.2f} | {'yes' if x['native_kib'] <= 8 else 'no'} |"
        )
    for x in checks.get("max_tokens", []):
        if x["clients"] != 10000:
            continue
        ok = x["held"] and x["large_kib"] <= x["small_kib"] * 1.05
        rows.append(
            f"| 10,000 idle mock streams with max_tokens=1,000,000 all held, memory flat | "
            f"{x['large_kib']:.2f} vs {x['small_kib']:.2f} KiB at max_tokens=3 "
            f"({'all held' if x['held'] else 'NOT all held'}) | "
            f"{x['large_kib'] / x['small_kib']:.3f} | {'yes' if ok else 'no'} |"
        )
    rows.append(
        "| `--workers 2` on this 2-core machine | not part of `make bench` (the load generator "
        "needs a core of its own): `python -m benchmarks.workers`, in the Optimisation log under "
        "Issue 17, `--workers 2`: two workers 1.76x one pinned worker, on 1.62 of the two cores, "
        "the load generator on the rest | | n/a |"
    )
    return rows


def write_results(data: dict[str, Any], plots: list[str]) -> None:
    m = data["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks` (`make bench`); do not edit by hand — "
        "the optimisation log comes from benchmarks/NOTES.md.",
        "",
        f"- Command: `{data['command']}`",
        f"- Code: commit {m.get('git', {}).get('commit', '?')}"
        + (
            "; engine files with uncommitted changes (others' work in progress in the "
            f"shared tree): {', '.join(m['git']['dirty'])}"
            if m.get("git", {}).get("dirty")
            else ", clean engine/"
        ),
        f"- Date: {data['date']} (total {data['seconds']} s)",
        "- Layout: server under test pinned to CPU 0, load generator pinned to CPU 1 "
        "(`sched_setaffinity`), 127.0.0.1 only, RLIMIT_NOFILE raised to the hard limit "
        f"({m['nofile'][1]}).",
        "- Event loop: every server under test runs on **uvloop** "
        f"({m['versions'].get('uvloop')}), and so does the load generator. Banners: "
        + "; ".join(f"{LABELS.get(k, k)}: `{v}`" for k, v in data.get("banners", {}).items()),
        "- The machine is shared and noisy: compare the ratios (taken within the same round), "
        "not absolute numbers across runs.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| nproc | {m['nproc']} |",
        f"| CPU | {m['cpu']} |",
        f"| kernel | {m['kernel']} |",
        f"| Python | {m['python']} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in m["versions"].items()]
    lines += ["", "## Targets (issue 5)", ""]
    quick = [name for name, entry in data["sections"].items() if entry.get("quick")]
    if quick:
        # Fewer rounds, shorter streams and fewer levels: the relay ladder in
        # particular gives a saturating gateway less time to fall behind.
        lines += [
            f"**Quick run** ({', '.join(quick)}): fewer rounds, shorter streams and fewer levels;"
            " indicative only. The verdicts that count come from a full `make bench`.",
            "",
        ]
    lines += targets(data["sections"]) + [""]
    lines += ["## Targets (issue 17)", "", *targets17(data["sections"]), ""]
    for name in BENCHES:
        entry = data["sections"].get(name)
        if entry is None:
            lines += [f"## {TITLES[name]}", "", "Not run yet.", ""]
        else:
            lines.append(render_section(name, entry))
    if RESULTS_MD.exists():
        # `make soak` writes its own section: it stays until the next soak replaces it.
        soak = section_of(RESULTS_MD.read_text())
        lines += [soak] if soak else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if NOTES_MD.exists():
        lines += [NOTES_MD.read_text().rstrip(), ""]
    RESULTS_MD.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~2-minute subset")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite RESULTS.md from results.json and NOTES.md, measuring nothing",
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(RESULTS_JSON.read_text())
        known = ["throughput.png", "latency_cdf.png", "concurrency_cdf.png"]
        found = {p.name for p in BENCH_DIR.glob("*.png")}
        plots = [p for p in known if p in found] + sorted(found - set(known))
        write_results(data, plots)
        log(f"wrote {RESULTS_MD} from {RESULTS_JSON}")
        return 0
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    raise_nofile()
    import matplotlib

    matplotlib.use("Agg")
    started = time.monotonic()
    previous: dict[str, Any] = {}
    if args.only and RESULTS_JSON.exists():
        previous = json.loads(RESULTS_JSON.read_text()).get("sections", {})
    sections = dict(previous)
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name} ...")
        entry = run_one(name, args.quick)
        entry["quick"] = args.quick
        sections[name] = entry
        log(f"[{i}/{len(names)}] {name}: {entry['status']} in {entry['seconds']} s")
    banners = _get(sections, "throughput", "result", "banners") or {}
    data = {
        "command": "python -m benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "banners": banners,
        "sections": sections,
    }
    RESULTS_JSON.write_text(json.dumps(_jsonable(data), indent=1))
    plots: list[str] = []
    for name in ("throughput", "concurrency"):
        entry = sections.get(name)
        if entry and entry["status"] == "ok":
            try:
                module = importlib.import_module(BENCHES[name])
                plots += module.plot(entry["result"], BENCH_DIR)
            except Exception as exc:
                log(f"plot for {name} failed: {exc}")
    write_results(data, plots)
    log(f"wrote {RESULTS_MD} in {data['seconds']} s")
    failed = [n for n in names if sections[n]["status"] != "ok"]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
