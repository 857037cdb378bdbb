"""Write ``memory-v1.sqlite3`` and ``memory-v1.json`` with the schema-1 code.

The files are fixtures of a release's on-disk format, so they are made once by
that release and committed; regenerating them with newer code would test
nothing. They were made from commit 142f953 (SCHEMA_VERSION 1)::

    git worktree add /tmp/v1 142f953
    PYTHONPATH=/tmp/v1 .venv/bin/python tests/data/make_memory_v1.py tests/data
    git worktree remove /tmp/v1

``memory-v1.json`` is what that code read back, which the migration test
expects the new code to read unchanged.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec

from engine.memory import open_store
from engine.memory.sqlite import SCHEMA_VERSION

CONVERSATIONS = {
    ("ChatSession", "v1-42"): [
        {"role": "system", "content": "be brief", "message_id": "s-1"},
        {"role": "user", "content": "héllo 👋", "message_id": "q-1", "metadata": {"lang": "fr"}},
        {
            "role": "assistant",
            "content": "bonjour",
            "message_id": "a-1",
            "metadata": {"stream_id": "st-1", "usage": {"prompt_tokens": 3}},
        },
        {"role": "user", "content": 'line\nbreaks and "quotes"', "message_id": "q-2"},
        {
            "role": "assistant",
            "content": "par",
            "message_id": "a-2",
            "metadata": {"partial": True, "reason": "client_disconnected"},
        },
    ],
    ("Чат 🙂", "v1-会话"): [
        {"role": "user", "content": "a picture", "type": "image", "metadata": {"url": "x.png"}},
        {"role": "assistant", "content": "a sound", "type": "audio", "message_id": "ид-1"},
        {"role": "user", "content": ""},
    ],
}


async def main(out: Path) -> None:
    assert SCHEMA_VERSION == 1, "run this with the schema-1 code (see the docstring)"
    db = out / "memory-v1.sqlite3"
    db.unlink(missing_ok=True)
    expected = []
    async with await open_store(f"sqlite:///{db.resolve()}") as store:
        for (parent, parent_id), messages in CONVERSATIONS.items():
            chat = store.for_parent(parent, parent_id)
            for message in messages:
                await chat.add_messages([message])
            expected.append(
                {
                    "parent": parent,
                    "parent_id": parent_id,
                    "messages": msgspec.to_builtins(await chat.get_messages()),
                }
            )
    text = json.dumps(expected, ensure_ascii=False, indent=2) + "\n"
    (out / "memory-v1.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
