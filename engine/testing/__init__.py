"""Fake provider upstreams, for tests, benchmarks and load tests without tokens.

Each fake is an aiohttp application that speaks one provider's API byte for
byte, answers with a scripted reply and records every request::

    from engine.testing import FakeOpenAI, Script, serve

    fake = FakeOpenAI(Script(tokens=["Hi", " there"], interval_ms=20))
    async with serve(fake.app()) as url:
        ...  # point OPENAI_BASE_URL at f"{url}/v1"
    fake.requests[0].headers["Authorization"]

:class:`Script` picks the reply and the delivery mode (fragmented, CRLF,
comments, unknown fields, slow, dropped, an error status, a mid-stream error,
timestamps). From a shell: ``python -m engine.testing openai --port 9000``.
"""

from __future__ import annotations

from ._fake import DEFAULT_TOKENS, STAMP, FakeUpstream, Recorded, Script, ToolCall, serve
from .anthropic import FakeAnthropic, anthropic_app
from .gemini import FakeGemini, gemini_app
from .openai import FakeOpenAI, openai_app

__all__ = [
    "DEFAULT_TOKENS",
    "FAKES",
    "STAMP",
    "FakeAnthropic",
    "FakeGemini",
    "FakeOpenAI",
    "FakeUpstream",
    "Recorded",
    "Script",
    "ToolCall",
    "anthropic_app",
    "gemini_app",
    "openai_app",
    "serve",
]

#: Provider name -> fake class.
FAKES: dict[str, type[FakeUpstream]] = {
    "openai": FakeOpenAI,
    "anthropic": FakeAnthropic,
    "gemini": FakeGemini,
}
