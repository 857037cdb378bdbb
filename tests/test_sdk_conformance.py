"""The official SDKs, pointed at the fakes, read the same text as our providers.

This checks the fakes against independent parsers of the real wire formats (the
``openai`` and ``anthropic`` packages are test extras only; the engine never
imports them). Gemini has no SDK in the test extras.
"""

from __future__ import annotations

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import UpstreamError
from engine.providers.anthropic import AnthropicProvider
from engine.providers.openai import OpenAIProvider
from engine.testing import FakeAnthropic, FakeOpenAI, Script, serve
from engine.wire import Message

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

KEY = "sk-conformance"
TOKENS = ["Héllo", " 世界 ", "👩‍👩‍👧‍👦", "a\nb\r\n", ' "q" \\', "y" * 5000, "."]
MESSAGES = [Message(role="user", content="Hi")]
MODES = {
    "whole": Script(tokens=TOKENS),
    "fragments": Script(tokens=TOKENS, fragment=5),
    "crlf-comments-unknown": Script(
        tokens=TOKENS, crlf=True, comments=True, unknown_fields=True, fragment=64
    ),
}


async def _ours(provider_cls, url: str) -> tuple[str, str | None]:
    async with aiohttp.ClientSession() as session:
        provider = provider_cls(ProviderSettings(api_key=KEY, base_url=url), session=session)
        text, finish = [], None
        async for chunk in provider.stream(MESSAGES):
            text.append(chunk.content)
            finish = chunk.finish_reason or finish
        return "".join(text), finish


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_openai_sdk_reads_the_same_text(mode):
    fake = FakeOpenAI(MODES[mode])
    async with serve(fake.app()) as url:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, finish, usage = [], None, None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage is not None:
                    usage = chunk.usage
            whole = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "Hi"}]
            )
        ours = await _ours(OpenAIProvider, f"{url}/v1")
    assert "".join(parts) == "".join(TOKENS)
    assert ours == ("".join(TOKENS), finish) == ("".join(TOKENS), "stop")
    assert usage is not None and usage.completion_tokens == len(TOKENS)
    assert whole.choices[0].message.content == "".join(TOKENS)


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_anthropic_sdk_reads_the_same_text(mode):
    fake = FakeAnthropic(MODES[mode])
    async with serve(fake.app()) as url:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=url, max_retries=0) as client:
            async with client.messages.stream(
                model="claude-test",
                max_tokens=100,
                messages=[{"role": "user", "content": "Hi"}],
            ) as stream:
                parts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            whole = await client.messages.create(
                model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
            )
        ours = await _ours(AnthropicProvider, url)
    assert "".join(parts) == "".join(TOKENS)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(TOKENS)
    assert ours == ("".join(TOKENS), "stop")
    assert whole.content[0].text == "".join(TOKENS)


async def test_both_sdks_and_ours_see_the_mid_stream_error():
    fake = FakeAnthropic(Script(tokens=["a", "b"], error_after=1, error_type="overloaded_error"))
    async with serve(fake.app()) as url:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=url, max_retries=0) as client:
            with pytest.raises(anthropic.APIStatusError, match="overloaded"):
                async with client.messages.stream(
                    model="c", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
                ) as stream:
                    [t async for t in stream.text_stream]
        with pytest.raises(UpstreamError, match="overloaded"):
            await _ours(AnthropicProvider, url)

    fake = FakeOpenAI(Script(tokens=["a", "b"], error_after=1))
    async with serve(fake.app()) as url:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            with pytest.raises(openai.APIError, match="overloaded"):
                [c async for c in stream]
        with pytest.raises(UpstreamError, match="overloaded"):
            await _ours(OpenAIProvider, f"{url}/v1")


async def test_sdks_read_the_fakes_error_statuses():
    fake = FakeOpenAI(Script(status=429, retry_after="1"))
    async with serve(fake.app()) as url:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0) as client:
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="m", messages=[])
    fake = FakeAnthropic(Script(status=401))
    async with serve(fake.app()) as url:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=url, max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.create(model="m", max_tokens=1, messages=[])
