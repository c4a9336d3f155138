"""Routing: the in-process connection map, the registry and the bus between processes.

``open_bus(url, server_id)`` picks the backend by scheme: ``memory://`` or ``redis://``.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from chatd.errors import ConfigError
from chatd.routing.base import Bus

BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("chatd.routing.memory", "MemoryBus", None),
    "redis": ("chatd.routing.redis", "RedisBus", "redis"),
    "rediss": ("chatd.routing.redis", "RedisBus", "redis"),
}


def open_bus(url: str, server_id: str) -> Bus:
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"unknown bus URL scheme {scheme!r} in {url!r} (known: {known})")
    module_name, class_name, extra = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'chatd[{extra}]'" if extra else ""
        raise ConfigError(f"the {scheme} bus needs a driver that is missing ({exc.name}){hint}")
    bus: Bus = getattr(module, class_name)(url, server_id)
    return bus


__all__ = ["BACKENDS", "Bus", "open_bus"]
