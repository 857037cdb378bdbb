"""``sse-engine serve`` with tracemalloc on, for ``python -m benchmarks.soak --tracemalloc``.

    python -m benchmarks._soak_traced serve ...   (SOAK_TRACE_DIR=folder)

Each SIGUSR1 writes, into ``$SOAK_TRACE_DIR``, a tracemalloc snapshot
(``snap-N.pickle``), the live objects the garbage collector tracks counted by
type (``types-N.json``), then ``done-N``. The soak takes one after warm-up and
one at the end, and diffs them: what grew, by line and by type. Nothing of this
is in the engine: the gateway under test is the same code, run by a wrapper.
tracemalloc slows it down and costs memory, so a traced run's RSS is not the
one recorded.

The snapshots are taken by a thread that waits for the signal (``sigwait``), not by
a Python signal handler: under uvloop a handler runs only when the loop next
looks at its signal fd, which an idle gateway may not do for a long time.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import threading
import tracemalloc
from pathlib import Path

#: Frames kept per allocation: enough to see who called the allocator's caller.
FRAMES = 8


def main() -> int:
    out = Path(os.environ["SOAK_TRACE_DIR"])
    tracemalloc.start(FRAMES)
    taken = 0

    def dump() -> None:
        nonlocal taken
        while True:
            signal.sigwait({signal.SIGUSR1})
            taken += 1
            gc.collect()
            tracemalloc.take_snapshot().dump(str(out / f"snap-{taken}.pickle"))
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            (out / f"types-{taken}.json").write_text(json.dumps(dict(counts)))
            (out / f"done-{taken}").touch()

    # Blocked here, before any other thread starts, so every thread inherits the
    # mask and only the waiter receives it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    threading.Thread(target=dump, name="tracemalloc-snapshots", daemon=True).start()
    from engine.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
