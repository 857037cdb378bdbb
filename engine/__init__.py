"""sse-engine: stream LLM replies to browsers over Server-Sent Events.

The public surface is small: build an :class:`Engine` (or an aiohttp app with
:func:`create_app`), pick a provider, stream. Everything else is importable from
its own module (``engine.sse`` for the codec, ``engine.wire`` for the types).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .app import create_app
from .config import Config
from .errors import EngineError
from .gateway import Engine
from .stream import EventStream
from .wire import Chunk, Message, Reply, Usage

__all__ = [
    "Chunk",
    "Config",
    "Engine",
    "EngineError",
    "EventStream",
    "Message",
    "Reply",
    "Usage",
    "__version__",
    "create_app",
]
