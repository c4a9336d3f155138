"""The durable store, chosen by URL: ``memory://``, ``sqlite:///path``, ``postgresql://``,
``mongodb://``. See :mod:`chatd.store.base` for the contract every backend keeps."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from chatd.errors import ConfigError
from chatd.store.base import Store

# scheme -> (module, class, pip extra that provides its driver)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("chatd.store.memory", "MemoryStore", None),
    "sqlite": ("chatd.store.sqlite", "SQLiteStore", None),
    "postgresql": ("chatd.store.postgres", "PostgresStore", "postgres"),
    "postgres": ("chatd.store.postgres", "PostgresStore", "postgres"),
    "mongodb": ("chatd.store.mongodb", "MongoStore", "mongodb"),
    "mongodb+srv": ("chatd.store.mongodb", "MongoStore", "mongodb"),
}


def open_store(url: str) -> Store:
    """Build (not start) the store backend for ``url``; ``ConfigError`` for an unknown scheme
    or a missing driver."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"unknown store URL scheme {scheme!r} in {url!r} (known: {known})")
    module_name, class_name, extra = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'chatd[{extra}]'" if extra else ""
        raise ConfigError(f"the {scheme} store needs a driver that is missing ({exc.name}){hint}")
    store: Store = getattr(module, class_name)(url)
    return store


__all__ = ["BACKENDS", "Store", "open_store"]
