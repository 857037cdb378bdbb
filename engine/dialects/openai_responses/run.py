"""A response's generation: :func:`generate`, and the live ones by id (:class:`LiveResponses`).

Every response is generated the same way, whoever reads it: the upstream's
chunks go through :class:`~.state.ResponseState` into the stream's log, one
entry per event; the stream's readers (the client that created it, resumed
ones, several at once) follow the log (engine.api.streams.follow_log). So a
``background`` response, one whose client left, and one followed from three
places are the same code, and a resume is a byte copy of the log. The
relay's single-task path (engine.streams.relay) writes its own client
inline; here the generation is a task of the engine's and its first client
a follower like any other, because Responses number every *event* (the relay
logs a frame per chunk, and a chunk here is several events) and because a
background response has no connection to write to at all. The chat
completions relay is untouched by any of this.

Stop (``POST /v1/responses/{id}/cancel``, ``POST /v1/streams/{id}/stop``)
goes through the engine's :class:`~engine.streams.generation.Generations`:
the upstream is closed at once and the response ends ``cancelled``, its
partial output stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...errors import EngineError, UpstreamError
from ...providers import ChunkStream
from ...streams.stats import StreamEnd
from ...wire import EstimatedUsage

if TYPE_CHECKING:
    from ...streams.generation import Generation, Generations
    from ...streams.stats import StreamObserver
    from .state import ResponseState
    from .stored import ResponseRecord

__all__ = ["Live", "LiveResponses", "generate"]

log = logging.getLogger("engine.stream")


class Live:
    """A response being generated: its state, its generation, its input items and readers."""

    __slots__ = ("generation", "items", "polled", "state", "window")

    def __init__(
        self,
        state: ResponseState,
        generation: Generation,
        items: list[dict[str, Any]],
        window: float,
    ) -> None:
        self.state = state
        self.generation = generation
        self.items = items
        #: Seconds the generation goes on with nobody following it (see
        #: engine.api.responses: a background response's is ``max_detach``).
        self.window = window
        #: When a client last polled it (``GET /v1/responses/{id}``), loop time.
        self.polled = -float("inf")

    @property
    def owner(self) -> str | None:
        """The client key that created it (``None``: no keys)."""
        return self.generation.owner

    def readers(self) -> int:
        """Who follows it: stream readers, and a client that polled within the window."""
        log = self.state.log
        followers = log.readers if log is not None else 0
        recent = asyncio.get_running_loop().time() - self.polled < self.window
        return followers + int(recent)

    def poll(self) -> None:
        self.polled = asyncio.get_running_loop().time()


class LiveResponses:
    """The responses of one engine still being generated, by id."""

    def __init__(self) -> None:
        self._live: dict[str, Live] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, rid: str, live: Live) -> None:
        self._live[rid] = live

    def get(self, rid: str) -> Live | None:
        return self._live.get(rid)

    def remove(self, rid: str) -> None:
        self._live.pop(rid, None)


def _withdrawn() -> bool:
    """Withdraw the cancellation being handled; False if another one is pending too."""
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0


async def generate(
    live: Live,
    chunks: ChunkStream | Callable[[], Awaitable[ChunkStream]],
    record: ResponseRecord | None,
    generations: Generations,
    *,
    shown: Callable[[str], str],
    on_end: Callable[[], None],
    observer: StreamObserver | None = None,
) -> EngineError | None:
    """Generate ``live``'s response from ``chunks`` (or the upstream ``chunks()`` opens,
    for a background response) to its end, storing it in ``record`` first.

    Ends ``completed``/``incomplete`` as the reply did, ``cancelled`` when
    stopped (or left by its readers), ``failed`` on an upstream error (its
    ``error`` event first). A cancellation that is not a Stop (the engine
    closing, the last reader gone) is raised again once the response is stored.
    Returns the error it failed with, if it did. ``observer`` hears of its end
    as of a relayed stream's (engine.telemetry).
    """
    state, generation = live.state, live.generation
    how = "interrupted"  # how the generation ended, for a late Stop
    error: EngineError | None = None
    cancelled = False
    started = time.monotonic()
    opened: ChunkStream | None = chunks if isinstance(chunks, ChunkStream) else None
    try:
        try:
            if opened is None:
                assert not isinstance(chunks, ChunkStream)
                opened = await chunks()
                opened.started = started
                state.opened(shown(opened.model))
            async with opened:
                async for chunk in opened:
                    state.chunk(chunk)
            state.settle(state.finish_reason)
            how = "done"
        except asyncio.CancelledError:
            if generation.stopping and _withdrawn():
                how = "stopped"
            else:
                cancelled = True
            state.settle("stopped")
        except Exception as exc:
            how, error = "failed", _engine_error(exc)
            state.settle(None, error)
        generation.ending()  # a Stop now waits for the store and the end instead of cutting them
        if record is not None:
            try:
                await record.store_reply(state)
            except Exception as exc:
                how, error = "failed", _engine_error(exc)
                state.fail(error)
    finally:
        # Always: the log's readers wait for its end.
        state.terminate(error)
        usage = state.response.usage
        generations.finish(generation, how, usage.total_tokens if usage is not None else None)
        on_end()
        if observer is not None:
            _report(observer, live, opened, how, error, started)
    if cancelled:
        raise asyncio.CancelledError
    return error


def _report(
    observer: StreamObserver,
    live: Live,
    chunks: ChunkStream | None,
    how: str,
    error: EngineError | None,
    started: float,
) -> None:
    """Tell ``observer`` how the generation ended, as the relay does (its ``_report``).

    No connection wrote it, so no bytes nor write delays are counted; a
    generation nobody followed to its end is ``interrupted``.
    """
    state = live.state
    try:
        provider = (chunks.provider if chunks is not None else "") or "unknown"
        model = state.response.model.rpartition("/")[2]
        if how in ("done", "stopped"):
            reason = how
        elif how == "failed":
            reason = "upstream_error" if isinstance(error, UpstreamError) else "error"
        else:
            reason = "interrupted"
        usage = state.response.usage
        end = StreamEnd(
            stream_id=state.response.id,
            provider=provider,
            model=model,
            reason=reason,
            status=None,
            started=chunks.started if chunks is not None and chunks.started else started,
            first_chunk=state.first_chunk,
            ended=time.monotonic(),
            chunks=state.chunks,
            input_tokens=usage.input_tokens if usage is not None else 0,
            output_tokens=usage.output_tokens if usage is not None else 0,
            estimated=isinstance(state.usage, EstimatedUsage) or state.usage is None,
            bytes=0,
            delays=[],
            alias=live.generation.alias,
        )
        observer.stream_ended(end)
    except Exception:  # metrics must never break a response's end
        log.exception("could not report the end of response %s", state.response.id)


def _engine_error(exc: Exception) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    log.error("response generation failed", exc_info=exc)
    return EngineError("internal error")
