"""Provider adapters and the registry that picks one by name.

Adapters are imported lazily, so the mock (the default) costs nothing more than
itself, and a provider module is loaded only when a request names it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import Config
from ..errors import UnknownProvider
from .base import ChunkStream, Provider, collect

__all__ = ["PROVIDERS", "ChunkStream", "Provider", "collect", "create_provider", "resolve"]

#: Canonical provider name -> "module:Class" (relative to this package).
PROVIDERS: dict[str, str] = {
    "mock": "mock:MockProvider",
    "openai": "openai:OpenAIProvider",
    "anthropic": "anthropic:AnthropicProvider",
    "gemini": "gemini:GeminiProvider",
}

#: Other names a request may use for a provider.
ALIASES: dict[str, str] = {
    "claude": "anthropic",
}


def resolve(name: str) -> str:
    """The canonical name for ``name`` (an alias or a name). Raises :class:`UnknownProvider`."""
    canonical = ALIASES.get(name, name)
    if canonical not in PROVIDERS:
        known = ", ".join(sorted([*PROVIDERS, *ALIASES]))
        raise UnknownProvider(f"unknown provider {name!r}; known providers: {known}")
    return canonical


def create_provider(name: str, config: Config, *, session: Any = None) -> Provider:
    """Build the provider ``name`` from ``config``, sharing the HTTP ``session``."""
    canonical = resolve(name)
    module_name, _, class_name = PROVIDERS[canonical].partition(":")
    module = importlib.import_module(f".{module_name}", __name__)
    cls = getattr(module, class_name)
    provider: Provider = cls.from_settings(config.provider_settings(canonical), session=session)
    return provider
