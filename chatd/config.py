"""Settings: flags, then ``CHATD_*`` environment variables, then a TOML file, then defaults.

Every setting is a field of :class:`Settings`; its flag is ``--name-with-dashes`` and its
variable ``CHATD_NAME_IN_CAPITALS``. ``config/chatd.example.toml`` documents each one.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from chatd.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    # Backend URLs; empty means "the embedded default under data_dir".
    store: str = ""
    media: str = ""
    bus: str = "memory://"
    push: str = "log"
    server_id: str = ""
    registration: str = "open"
    max_upload_bytes: int = 25 * 1024 * 1024
    uploads_per_hour: int = 200
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    # WebSocket
    heartbeat: float = 25.0
    hello_timeout: float = 10.0
    max_frame_bytes: int = 65536
    send_buffer_bytes: int = 4 * 1024 * 1024
    max_connections_per_user: int = 20
    # Chat rules
    max_body_chars: int = 16384
    max_group_members: int = 1000
    presence_grace: float = 3.0
    messages_per_second: float = 20.0
    message_burst: int = 200
    typing_per_second: float = 2.0
    # Sessions
    session_ttl_days: float = 30.0
    session_recheck_seconds: float = 1800.0
    revocation_poll_seconds: float = 2.0
    login_attempts_per_minute: int = 10
    login_slowdown_seconds: float = 1.0
    registrations_per_hour: int = 60
    # Push
    push_previews: bool = True
    push_coalesce_seconds: float = 10.0
    push_allow_private_hosts: bool = False
    vapid_subject: str = "mailto:admin@localhost"
    # Operations
    metrics_host: str = ""
    metrics_port: int = 0
    uvloop: bool = True

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{Path(self.data_dir) / 'chatd.db'}"

    @property
    def media_url(self) -> str:
        return self.media or f"file://{Path(self.data_dir).resolve() / 'media'}"

    @property
    def origins(self) -> frozenset[str]:
        """Allowed WebSocket ``Origin`` values; default: the server's own origin."""
        if self.allowed_origins:
            return frozenset(self.allowed_origins)
        own = {f"http://{self.host}:{self.port}"}
        if self.host in ("127.0.0.1", "0.0.0.0", "::"):
            own.add(f"http://localhost:{self.port}")
        return frozenset(own)


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))
#: The limits, and the settings that decide who may connect, for how long, and what the server
#: may reach on a user's behalf. docs/security.md gives each one's default and what a client
#: sees when it hits it; tests/docs/test_security_doc.py fails when one is missing there, and
#: when a setting named like a limit (``max_*``, ``*_per_second``, ``*_burst``, ...) is not
#: listed here.
SECURITY_SETTINGS: tuple[str, ...] = (
    "allowed_origins",
    "registration",
    "hello_timeout",
    "max_frame_bytes",
    "send_buffer_bytes",
    "max_connections_per_user",
    "max_body_chars",
    "max_group_members",
    "messages_per_second",
    "message_burst",
    "typing_per_second",
    "session_ttl_days",
    "session_recheck_seconds",
    "revocation_poll_seconds",
    "login_attempts_per_minute",
    "login_slowdown_seconds",
    "registrations_per_hour",
    "max_upload_bytes",
    "uploads_per_hour",
    "push_allow_private_hosts",
)
_TYPES: dict[str, Any] = {f.name: f.type for f in fields(Settings)}
_DEFAULTS = Settings()


def _convert(name: str, value: Any) -> Any:
    """Turn a flag, variable or TOML value into the field's type, or explain what is wrong."""
    kind = _TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "tuple[str, ...]":
            if isinstance(value, list | tuple):
                return tuple(str(v).strip() for v in value if str(v).strip())
            return tuple(part.strip() for part in str(value).split(",") if part.strip())
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {kind}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources, highest precedence first: flags, environment, file, defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("CHATD_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in document.items():
            name = key.replace("-", "_")
            if name not in _TYPES:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _convert(name, value)
    for name in SETTING_NAMES:
        variable = "CHATD_" + name.upper()
        if variable in env:
            values[name] = _convert(name, env[variable])
    for name, value in (flags or {}).items():
        if value is not None and name in _TYPES:
            values[name] = _convert(name, value)
    settings = dataclasses.replace(_DEFAULTS, **values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if settings.registration not in ("open", "closed"):
        raise ConfigError("registration must be 'open' or 'closed'")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port {settings.port} is out of range")
    for name in (
        "max_upload_bytes",
        "max_frame_bytes",
        "send_buffer_bytes",
        "max_body_chars",
        "max_group_members",
        "max_connections_per_user",
        "message_burst",
        "uploads_per_hour",
        "registrations_per_hour",
    ):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if settings.heartbeat <= 0 or settings.hello_timeout <= 0:
        raise ConfigError("heartbeat and hello_timeout must be positive")
    if settings.revocation_poll_seconds <= 0:
        raise ConfigError("revocation_poll_seconds must be positive")
    if not 0 <= settings.login_slowdown_seconds <= 30:
        raise ConfigError("login_slowdown_seconds must be between 0 and 30")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level must be one of debug, info, warning, error")
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")


def setting_help() -> dict[str, str]:
    """One-line help per setting, shown by ``chatd serve --help``."""
    return dict(_HELP)


_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "port to listen on",
    "data_dir": "folder for the embedded store, media and VAPID keys",
    "store": "store URL (empty: sqlite under data_dir): sqlite:///path, postgresql://, mongodb://, memory://",
    "media": "media URL (empty: a folder under data_dir): file:///dir, s3://bucket?endpoint_url=...",
    "bus": "bus URL: memory:// (one process) or redis://host:6379/0",
    "push": "push providers: log, or a comma list of webpush, webhook",
    "server_id": "this process's id in a cluster (default: random)",
    "registration": "open: anyone may register; closed: only `chatd user add`",
    "max_upload_bytes": "largest media upload in bytes",
    "uploads_per_hour": "media uploads per user per hour: a burst of N, then one every 3600/N s",
    "allowed_origins": "comma list of exact origins allowed to open /ws",
    "log_level": "debug, info, warning or error",
    "log_format": "text or json",
    "heartbeat": "seconds between WebSocket pings",
    "hello_timeout": "seconds a new socket has to send hello",
    "max_frame_bytes": "largest WebSocket frame accepted",
    "send_buffer_bytes": "outgoing bytes buffered per socket before it is closed (1013)",
    "max_connections_per_user": "open sockets per user",
    "max_body_chars": "longest message body",
    "max_group_members": "largest group",
    "presence_grace": "seconds before a disconnected user is announced offline",
    "messages_per_second": "sustained sends per user per second",
    "message_burst": "sends a user may make at once before the rate applies",
    "typing_per_second": "typing frames relayed per socket per second",
    "session_ttl_days": "days a session lives without use (sliding)",
    "session_recheck_seconds": "how often an open socket re-checks its session",
    "revocation_poll_seconds": "how often to look for disabled users and changed passwords and "
    "close their sockets (4401)",
    "login_attempts_per_minute": "failed logins per username and per address per minute",
    "login_slowdown_seconds": "once a username has spent half of its failed-login allowance, "
    "each further failure for it is answered this much later (0: never)",
    "registrations_per_hour": "accounts registered over HTTP per client address per hour "
    "(a burst of as many, refilled evenly); chatd user add is not limited",
    "push_previews": "include a message preview in push notifications",
    "push_coalesce_seconds": "fold a user's pushes for one conversation within this window",
    "push_allow_private_hosts": "allow push endpoints on private or loopback addresses",
    "vapid_subject": "contact URI sent to Web Push services",
    "metrics_host": "serve /metrics on another address too (empty: only on the main port)",
    "metrics_port": "port for metrics_host",
    "uvloop": "use uvloop when installed",
}


def example_toml() -> str:
    """The text of ``config/chatd.example.toml``; a test keeps the file equal to it."""
    lines = [
        "# chatd example configuration. Every setting is optional; the values shown are the",
        "# defaults. Precedence: command-line flags, then CHATD_* environment variables, then",
        "# this file. Use it with `chatd serve --config chatd.toml` (or CHATD_CONFIG=chatd.toml).",
        "",
    ]
    for f in fields(Settings):
        value = getattr(_DEFAULTS, f.name)
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, int | float):
            shown = repr(value)
        elif isinstance(value, tuple):
            shown = "[]"
        else:
            shown = f'"{value}"'
        flag = f.name.replace("_", "-")
        lines.append(f"# {_HELP[f.name]}")
        lines.append(f"# (flag --{flag}, environment CHATD_{f.name.upper()})")
        lines.append(f"# {f.name} = {shown}")
        lines.append("")
    return "\n".join(lines)
