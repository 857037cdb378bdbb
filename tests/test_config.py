"""Configuration: defaults < TOML file < environment < flags; keys never shown."""

from __future__ import annotations

import pytest

import engine
from engine.config import Config
from engine.errors import InvalidFields


def test_defaults_serve_the_mock_offline():
    config = Config.load(environ={})
    assert config.provider == "mock"
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.heartbeat == 15 and config.send_timeout == 30 and config.shutdown_grace == 10
    assert config.max_body_size == 1024 * 1024
    assert config.memory_url == "sqlite:///./engine-memory.db"
    assert config.provider_settings("anthropic").model  # a default model per provider


def test_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "engine.toml"
    path.write_text(
        'provider = "openai"\nheartbeat = 5\n\n'
        '[providers.openai]\napi_key = "from-file"\nmodel = "gpt-file"\n'
    )
    config = Config.load(path, environ={})
    assert config.provider == "openai" and config.heartbeat == 5
    assert config.provider_settings("openai").api_key == "from-file"

    env = {"OPENAI_API_KEY": "from-env", "ENGINE_PROVIDER": "gemini", "GOOGLE_API_KEY": "g"}
    config = Config.load(path, environ=env)
    assert config.provider == "gemini"
    assert config.provider_settings("openai").api_key == "from-env"
    assert config.provider_settings("openai").model == "gpt-file"  # the file still counts
    assert config.provider_settings("gemini").api_key == "g"

    config = Config.load(path, environ=env, provider="anthropic", heartbeat=None)
    assert config.provider == "anthropic"
    assert config.heartbeat == 5  # a flag left unset changes nothing


def test_api_keys_stay_out_of_reprs():
    config = Config.load(environ={"ANTHROPIC_API_KEY": "sk-ant-secret"})
    assert "sk-ant-secret" not in repr(config)
    assert "sk-ant-secret" not in repr(config.provider_settings("anthropic"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("heartbeat = -1", "heartbeat"),
        ("port = 70000", "port"),
        ("nosuch = 1", "nosuch"),
        ("heartbeat = ", "cannot read"),
    ],
)
def test_bad_config_file_is_a_clear_error(tmp_path, text, match):
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(InvalidFields, match=match):
        Config.load(path, environ={})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidFields, match="cannot read config file"):
        Config.load(tmp_path / "nope.toml", environ={})


def test_public_names_are_exported():
    exported = {name for name in dir(engine) if not name.startswith("_")}
    assert set(engine.__all__) - {"__version__"} <= exported
    for name in engine.__all__:
        assert getattr(engine, name) is not None
