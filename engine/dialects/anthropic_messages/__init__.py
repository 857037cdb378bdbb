"""The Anthropic Messages dialect: its request and response types, errors and framing.

The translation to each provider's format is the provider adapters' own: this
package maps a Messages request onto :class:`~engine.wire.Message` and
:class:`~engine.wire.Options`, and the engine's chunks back onto Anthropic's
message object and stream events
(https://docs.anthropic.com/en/api/messages, .../messages-streaming).

Requests: every field of Anthropic's reference is declared
(:class:`MessagesRequest`, content blocks, tools, ``tool_choice``,
``thinking``, ``output_config``) and either carried, accepted as bookkeeping
that cannot change the answer, or refused by name
(:class:`~engine.errors.UnsupportedField`, 400); an undeclared field is
refused by msgspec, naming it. The mapping, and why each choice, are
:mod:`.messages`' (``system``, the messages' blocks) and :mod:`.options`'
(the rest, and the fields refused by name).

Accepted and not sent, as they cannot change the answer: ``cache_control``
(top-level and on blocks and tools: prompt caching is cost, not content),
``citations`` on replayed text, ``service_tier``, ``diagnostics``,
``user_profile_id``, ``workspace_id``, ``speed: "standard"``, a tool's
``eager_input_streaming``, ``strict: false``, ``allowed_callers: ["direct"]``.

The modules, each importing only those above it:

* :mod:`.blocks`, :mod:`.request`: the request Structs;
* :mod:`.errors`: Anthropic's error body and status, before and after the
  headers, and the wording of a refused field;
* :mod:`.messages`, :mod:`.options`: a request as the engine's messages and
  options (:func:`to_messages`, :func:`to_options`, :func:`check`);
* :mod:`.count`: ``count_tokens``' estimate;
* :mod:`.reply`: the whole reply as a message object;
* :mod:`.events`: a streamed reply as Anthropic's events (:class:`AnthropicFraming`).
"""

from __future__ import annotations

from .count import IMAGE_TOKENS, TOOLS_TOKENS, TokenCount, estimate_tokens
from .errors import ErrorBody, anthropic_error, error_answer, error_frame
from .events import AnthropicFraming
from .messages import to_messages
from .options import check, prompt_options, to_options
from .reply import message_id, reply_message, stop_reason
from .request import CountTokensRequest, MessagesRequest

__all__ = [
    "IMAGE_TOKENS",
    "TOOLS_TOKENS",
    "AnthropicFraming",
    "CountTokensRequest",
    "ErrorBody",
    "MessagesRequest",
    "TokenCount",
    "anthropic_error",
    "check",
    "error_answer",
    "error_frame",
    "estimate_tokens",
    "message_id",
    "prompt_options",
    "reply_message",
    "stop_reason",
    "to_messages",
    "to_options",
]
