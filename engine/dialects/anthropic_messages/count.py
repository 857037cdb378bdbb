"""``/v1/messages/count_tokens``: its answer, and the estimate it gives.

The estimate is the engine's (:func:`engine.wire.estimate_tokens`, the one
rule every route's estimated usage follows) with what is Claude's own: an
image costs what Claude charges for one, and tools add the system prompt
Anthropic adds for tool use.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from ... import wire
from ...wire import Message, Options

__all__ = ["IMAGE_TOKENS", "TOOLS_TOKENS", "TokenCount", "estimate_tokens"]

#: Tokens counted per image: Anthropic's largest unresized image (about 1.15
#: megapixels at 750 pixels a token, https://docs.anthropic.com/en/docs/build-with-claude/vision).
IMAGE_TOKENS = 1600
#: Tokens counted once when tools are given: the size of the system prompt
#: Anthropic adds for tool use (346 for ``auto``, published with its pricing).
TOOLS_TOKENS = 346


class TokenCount(Struct, kw_only=True):
    input_tokens: int


def estimate_tokens(messages: Sequence[Message], options: Options) -> int:
    """An estimate of the input tokens of ``messages`` with ``options``' tools.

    Not a count: :func:`engine.wire.estimate_tokens` of the messages and
    tools, with :data:`IMAGE_TOKENS` per image, plus :data:`TOOLS_TOKENS` when
    there are tools; never below 1.
    """
    tokens = wire.estimate_tokens(messages, options.tools, image_tokens=IMAGE_TOKENS)
    if options.tools:
        tokens += TOOLS_TOKENS
    return max(1, tokens)
