"""How the Anthropic adapter refuses a request field it cannot carry."""

from __future__ import annotations

from ...errors import UnsupportedField

__all__ = ["PROVIDER", "refuse"]

PROVIDER = "anthropic"


def refuse(field: str, why: str) -> UnsupportedField:
    """The error naming ``field`` and why Anthropic cannot take it (400)."""
    return UnsupportedField(
        f"`{field}` is not supported by the {PROVIDER} provider: {why}", field=field
    )
