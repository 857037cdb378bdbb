"""The OpenAI Responses dialect: ``/v1/responses``' request, objects, events and errors.

The translation to each provider's format is the provider adapters' own: this
package maps a Responses request onto the engine's messages and options, and
the engine's chunks back onto OpenAI's response object and its stream of
events (openai-python's ``types/responses``).

The modules, each importing only those above it:

* :mod:`.request`: :class:`ResponsesRequest`, every field of OpenAI's
  reference, carried or refused by name (:func:`check`, :func:`to_options`);
* :mod:`.items`: the input items and tools onto the engine's messages and
  Chat Completions tools (:func:`to_input`, :func:`to_tools`);
* :mod:`.objects`: the response object, its output items, the events and the
  errors, in OpenAI's shapes;
* :mod:`.state`: one response's events as its chunks come
  (:class:`ResponseState`; an event's ``sequence_number`` is its log index);
* :mod:`.stored`: stored responses on the memory store;
* :mod:`.run`: the generation, an engine task feeding the stream log;
* :mod:`.elsewhere`: a response another worker or box generates, as its
  stream log's copy shows it (the shared Redis stream log).
"""

from __future__ import annotations

from .items import new_id, to_input, to_tool_choice, to_tools
from .objects import (
    ResponseNotFound,
    ResponseObject,
    error_answer,
    error_frame,
    new_response,
)
from .request import ResponsesRequest, check, refuse, to_options
from .run import Live, LiveResponses, generate
from .state import ResponseState
from .stored import PARENT, ResponseRecord

__all__ = [
    "PARENT",
    "Live",
    "LiveResponses",
    "ResponseNotFound",
    "ResponseObject",
    "ResponseRecord",
    "ResponseState",
    "ResponsesRequest",
    "check",
    "error_answer",
    "error_frame",
    "generate",
    "new_id",
    "new_response",
    "refuse",
    "to_input",
    "to_options",
    "to_tool_choice",
    "to_tools",
]
