"""One Prometheus exposition from several workers' (``serve --workers N``): :func:`merge`.

Why merge expositions rather than use prometheus_client's multiprocess mode:
that mode keeps every value in memory-mapped files under one folder and reads
them all at each scrape, but it supports neither custom collectors (the
gauges and counters :class:`engine.metrics._Live` reads from the engine's
registries when Prometheus scrapes, so that they cost nothing between
scrapes) nor a registry per engine (it works on prometheus_client's global
values), and it would put a file write behind every ``inc()``. Here each
worker counts exactly as a single ``serve`` does, and only a scrape pays: the
worker that answers ``/metrics`` asks its siblings for theirs over their Unix
sockets (engine.siblings) and adds them up with this function.

Text format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/),
as prometheus_client writes it: a family's ``# HELP`` and ``# TYPE`` lines,
then its samples, ``name{labels} value``. Samples with the same name and
labels are summed, whatever the type: counters and histograms (buckets, sum,
count) add up, and so do the gauges here, which are all counts (open streams,
generations, bytes held). A ``*_created`` sample (the time a series was
made) takes the earliest. A series only some workers have is kept as it is.
Families and samples keep the order of the first exposition that has them,
so a histogram's buckets stay in ``le`` order.

The limit this shares with any per-process scheme: a worker that restarts
starts its counters again from 0, so the sum drops; Prometheus' ``rate()``
reads a drop as a counter reset (it then counts the new value as the
increase), which is the right reading for the restarted worker and an
undercount of the others over that one interval.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["merge"]


def _value(text: str) -> float:
    return float(text)  # (float() reads "+Inf", "-Inf" and "NaN" too)


def _render(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


class _Family:
    __slots__ = ("head", "samples")

    def __init__(self) -> None:
        #: The ``# HELP``/``# TYPE`` lines, as the first exposition wrote them.
        self.head: list[str] = []
        #: Sample key (name and labels, as written) -> value.
        self.samples: dict[str, float] = {}


def merge(expositions: Iterable[bytes | str], extra: Iterable[str] = ()) -> bytes:
    """The samples of ``expositions`` added up, as one exposition (see the module docstring).

    ``extra`` lines (whole families, ``# HELP``, ``# TYPE`` and samples) are
    appended as they are. A line that is neither a comment nor
    ``<series> <value>`` is skipped.
    """
    families: dict[str, _Family] = {}
    for exposition in expositions:
        text = exposition.decode() if isinstance(exposition, bytes) else exposition
        family: _Family | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    family = families.get(name)
                    if family is None:
                        family = families[name] = _Family()
                    if len(family.head) < 2 and line not in family.head:
                        family.head.append(line)
                continue
            # "name{labels} value [timestamp]": label values may hold spaces,
            # so split off the value from the end (no timestamps are written here).
            key, _, value = line.rpartition(" ")
            if not key:
                continue
            try:
                number = _value(value)
            except ValueError:
                continue
            if family is None:  # (a sample before any comment: a family of its own)
                family = families.setdefault(key.partition("{")[0], _Family())
            samples = family.samples
            held = samples.get(key)
            if held is None:
                samples[key] = number
            elif key.partition("{")[0].endswith("_created"):
                samples[key] = min(held, number)
            else:
                samples[key] = held + number
    out: list[str] = []
    for family in families.values():
        out.extend(family.head)
        out.extend(f"{key} {_render(value)}" for key, value in family.samples.items())
    out.extend(extra)
    return ("\n".join(out) + "\n").encode()
