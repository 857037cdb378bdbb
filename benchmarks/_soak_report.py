"""The soak's arithmetic and Markdown: slopes after warm-up, the table, the RESULTS.md section.

A series is flat when it does not grow after warm-up. Its slope is a least
squares fit over the samples after the first :data:`WARMUP` of the run, per
minute, with its standard error; it *grows* when both the rise it implies over
that window exceeds a tolerance (:data:`TOLERANCE` of the series' median, or
an absolute floor for allocator and scheduling noise, :data:`GAUGES`) and the
slope is more than two standard errors above 0 (a random load makes gauges
such as open streams wander, and a few samples can tilt a fit). The slope over
the second half of that window is given beside it: a series still settling
(a cache filling up) slows down, a leak keeps its pace.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = [
    "COUNTERS",
    "GAUGES",
    "SECTION",
    "WARMUP",
    "analyse",
    "fit",
    "replace_section",
    "section_of",
    "table",
]

#: The share of the run left out of the slopes (the first 20%).
WARMUP = 0.2
#: The RESULTS.md heading the soak owns (a new run replaces the section).
SECTION = "## Soak"
#: Rise over the window that counts as growth: this share of the median...
TOLERANCE = 0.02
#: (key, label, unit, floor): ...or this absolute rise, whichever is larger.
GAUGES: tuple[tuple[str, str, str, float], ...] = (
    ("rss_kib", "gateway RSS", "KiB", 2048),
    ("rss_anon_kib", "of which anonymous (heap)", "KiB", 2048),
    ("rss_file_kib", "of which files mapped", "KiB", 1024),
    ("fds", "open file descriptors", "fds", 8),
    ("tasks", "asyncio tasks", "tasks", 10),
    ("threads", "OS threads", "threads", 2),
    ("open_streams", "open streams", "streams", 10),
    ("generations", "generations", "generations", 10),
    ("detached", "detached generations", "generations", 5),
    ("resume_logs", "resume logs held", "logs", 20),
    ("resume_log_kib", "resume log bytes held", "KiB", 256),
)
#: (key, label): cumulative counts, whose slope is a rate.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("finished", "streams finished (client side)"),
    ("errors", "errors"),
    ("mismatches", "resume mismatches"),
)


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares slope of ``(x, y)`` points and its standard error (0 when undefined)."""
    n = len(points)
    if n < 2:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, 0.0
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    if n < 3:
        return slope, 0.0
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    return slope, math.sqrt(residual / (n - 2) / sxx)


def analyse(samples: Sequence[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """One row per series: the values after warm-up, slope per minute, and the verdict."""
    after = [s for s in samples if s["t"] >= WARMUP * seconds]
    window = (after[-1]["t"] - after[0]["t"]) / 60 if len(after) > 1 else 0.0
    rows: list[dict[str, Any]] = []
    for key, label, unit, floor in GAUGES:
        points = [(s["t"] / 60, float(s[key])) for s in after if s.get(key) is not None]
        if not points:
            continue
        values = [y for _, y in points]
        slope, se = fit(points)
        late, _ = fit(points[len(points) // 2 :])
        median = statistics.median(values)
        rise = slope * window
        tolerance = max(TOLERANCE * abs(median), floor)
        grows = rise > tolerance and slope > 2 * se
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "kind": "gauge",
                "first": values[0],
                "last": values[-1],
                "min": min(values),
                "max": max(values),
                "median": median,
                "slope": slope,
                "se": se,
                "late_slope": late,
                "rise": rise,
                "tolerance": tolerance,
                "flat": not grows,
            }
        )
    for key, label in COUNTERS:
        points = [(s["t"] / 60, float(s[key])) for s in after if s.get(key) is not None]
        if not points:
            continue
        slope, se = fit(points)
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": "/min",
                "kind": "counter",
                "first": points[0][1],
                "last": points[-1][1],
                "slope": slope,
                "se": se,
            }
        )
    return rows


def _num(value: float) -> str:
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def table(rows: Sequence[dict[str, Any]], before: dict[str, Any], drained: dict[str, Any]) -> str:
    """The Markdown table of :func:`analyse`'s rows, with the idle values before and after."""
    lines = [
        "| series | before load | after warm-up: first -> last (min-max) | slope per minute "
        "(± s.e.) | slope, 2nd half | rise over the window (tolerance) | flat | after the load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        key = row["key"]
        if row["kind"] == "counter":
            lines.append(
                f"| {row['label']} | | {_num(row['first'])} -> {_num(row['last'])} "
                f"| {_num(row['slope'])} a minute | | | | |"
            )
            continue
        idle = [_num(v) if (v := d.get(key)) is not None else "?" for d in (before, drained)]
        lines.append(
            f"| {row['label']} ({row['unit']}) | {idle[0]} "
            f"| {_num(row['first'])} -> {_num(row['last'])} ({_num(row['min'])}-{_num(row['max'])})"
            f" | {row['slope']:+,.2f} (± {row['se']:,.2f}) | {row['late_slope']:+,.2f} "
            f"| {row['rise']:+,.1f} ({_num(row['tolerance'])}) "
            f"| {'yes' if row['flat'] else '**no**'} | {idle[1]} |"
        )
    return "\n".join(lines)


def section_of(text: str) -> str | None:
    """The soak's section of a RESULTS.md (its heading to the next ``## ``), or None."""
    lines = text.split("\n")
    try:
        start = lines.index(SECTION)
    except ValueError:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its soak section replaced by ``section`` (or inserted before the
    plots, else before the optimisation log, else at the end)."""
    section = section.rstrip() + "\n"
    old = section_of(text)
    if old is not None:
        return text.replace(old, section, 1)
    lines = text.split("\n")
    for anchor in ("## Plots", "## Optimisation log"):
        if anchor in lines:
            at = lines.index(anchor)
            return "\n".join([*lines[:at], *section.split("\n"), *lines[at:]])
    return text.rstrip() + "\n\n" + section
