"""Settings precedence and validation, and the example file documenting every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.config import Settings, example_toml, load_settings
from chatd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_serve_the_embedded_store_under_the_data_dir() -> None:
    settings = load_settings({}, env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.store_url == "sqlite:///data/chatd.db"
    assert settings.bus == "memory://"


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "chatd.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nlog-level = "debug"\nheartbeat = 5\n')
    env = {"CHATD_PORT": "9002", "CHATD_HOST": "10.0.0.1"}
    settings = load_settings({"port": 9003}, env=env, config_file=str(config))
    assert settings.port == 9003  # flag
    assert settings.host == "10.0.0.1"  # environment
    assert settings.log_level == "debug"  # file
    assert settings.heartbeat == 5.0
    assert settings.registration == "open"  # default


def test_list_settings_accept_commas_and_toml_arrays(tmp_path: Path) -> None:
    env = {"CHATD_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    assert load_settings({}, env=env).allowed_origins == ("https://a.example", "https://b.example")
    config = tmp_path / "c.toml"
    config.write_text('allowed_origins = ["https://c.example"]\n')
    assert load_settings({}, env={}, config_file=str(config)).origins == {"https://c.example"}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CHATD_PORT": "eighty"}, "port"),
        ({"CHATD_REGISTRATION": "maybe"}, "registration"),
        ({"CHATD_MAX_FRAME_BYTES": "0"}, "max_frame_bytes"),
        ({"CHATD_PUSH_PREVIEWS": "perhaps"}, "push_previews"),
        ({"CHATD_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings({}, env=env)


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings({}, env={}, config_file=str(config))


def test_the_example_file_documents_every_setting() -> None:
    text = (ROOT / "config" / "chatd.example.toml").read_text()
    assert text == example_toml(), "regenerate config/chatd.example.toml from example_toml()"
    for name in Settings.__dataclass_fields__:
        assert f"# {name} = " in text
