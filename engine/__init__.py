"""sse-engine: stream LLM replies to browsers over Server-Sent Events.

The public surface is small: build an :class:`Engine` (or an aiohttp app with
:func:`create_app`), pick a provider, stream. Everything else is importable from
its own module (``engine.sse`` for the codec, ``engine.wire`` for the types).

The names that need aiohttp are loaded on first use (PEP 562), so importing the
sans-IO parts (``engine.sse``, ``engine.wire``) never imports aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .config import Config
from .errors import EngineError
from .wire import Chunk, Message, Reply, Usage

if TYPE_CHECKING:
    from .app import create_app
    from .gateway import Engine
    from .streams import EventStream

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

_LAZY = {"create_app": ".app", "Engine": ".gateway", "EventStream": ".streams"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
