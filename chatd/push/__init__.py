"""Push notifications for members with no device online.

The ``--push`` setting (``CHATD_PUSH``) names the providers: ``log`` (the default: record what
would be sent) or a comma list of ``webpush`` and ``webhook``. :func:`open_push` turns it into
a :class:`PushProviders` (a sender per subscription kind, plus the VAPID keys), which is handed
to a :class:`chatd.push.dispatcher.PushDispatcher`; the dispatcher does the filtering,
coalescing, retries and pruning, off the send path.

    senders (one per kind)        dispatcher                     store
    ├── log      record only      notify() -> bounded queue       push_subscriptions
    ├── webpush  RFC 8030/8291/2  filter online, muted            delete_push_subscription_by_id
    └── webhook  JSON POST        coalesce, retry, prune          get_members (muted)
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatd.errors import ConfigError
from chatd.push.base import PushResult, PushSender
from chatd.push.options import PushOptions

if TYPE_CHECKING:  # importing it needs cryptography, which only the webpush extra brings
    from chatd.push.vapid import VapidKeys

logger = logging.getLogger(__name__)  # not `log`: chatd.push.log is a submodule

# provider name -> (module, class, pip extra that provides its dependencies)
PROVIDERS: dict[str, tuple[str, str, str | None]] = {
    "log": ("chatd.push.log", "LogSender", None),
    "webpush": ("chatd.push.webpush", "WebPushSender", "webpush"),
    "webhook": ("chatd.push.webhook", "WebhookSender", None),
}
SUBSCRIPTION_KINDS = ("webpush", "webhook")


@dataclass(frozen=True, slots=True)
class PushProviders:
    """What ``open_push`` built.

    Attributes:
        names: the providers named by the setting, e.g. ``("webpush", "webhook")``.
        senders: subscription kind -> sender. With ``log``, one recorder serves both kinds.
        vapid: the server's VAPID keys (``None`` only if ``cryptography`` is missing in
            ``log`` mode); ``vapid.public_key_b64`` is what browsers subscribe with.
        allow_private_hosts: endpoints may name loopback or LAN addresses (the HTTP API
            refuses such subscriptions otherwise).
    """

    names: tuple[str, ...]
    senders: Mapping[str, PushSender] = field(default_factory=dict)
    vapid: VapidKeys | None = None
    allow_private_hosts: bool = False

    def accepts(self, kind: str) -> bool:
        """Whether subscriptions of ``kind`` can be created on this server."""
        if kind == "webpush" and self.vapid is None:
            return False
        return kind in self.senders


def _parse_names(spec: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in (spec or "log").split(",")))
    names = tuple(n for n in names if n)
    known = ", ".join(PROVIDERS)
    for name in names:
        if name not in PROVIDERS:
            raise ConfigError(f"unknown push provider {name!r} in {spec!r} (known: {known})")
    if not names:
        raise ConfigError(f"the push setting is empty (known: {known})")
    if "log" in names and len(names) > 1:
        raise ConfigError(f"push provider 'log' cannot be combined with others, got {spec!r}")
    return names


def open_push(
    spec: str,
    *,
    data_dir: str | os.PathLike[str],
    vapid_subject: str | None = None,
    timeout_s: float = 10.0,
    ttl_s: int = 86400,
    allow_private_hosts: bool = False,
    log_capacity: int = 1000,
) -> PushProviders:
    """Build (not start) the senders named by ``spec``; the dispatcher starts them.

    VAPID keys are loaded or created in ``data_dir`` whenever ``webpush`` is enabled, and in
    ``log`` mode too when ``cryptography`` is installed, so that a browser can subscribe to a
    development server and the log shows what it would have received.

    Raises:
        ConfigError: an unknown provider name, a missing dependency (named with the extra
            that installs it), a bad ``vapid_subject`` or an unusable key file.
    """
    names = _parse_names(spec)
    options_kwargs: dict[str, object] = {
        "data_dir": data_dir,
        "timeout_s": timeout_s,
        "ttl_s": ttl_s,
        "allow_private_hosts": allow_private_hosts,
        "log_capacity": log_capacity,
    }
    if vapid_subject:
        options_kwargs["vapid_subject"] = vapid_subject
    options = PushOptions(**options_kwargs)  # type: ignore[arg-type]

    vapid = _load_vapid(options, required="webpush" in names)
    senders: dict[str, PushSender] = {}
    for name in names:
        module_name, class_name, extra = PROVIDERS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f"; install it with: pip install 'chatd[{extra}]'" if extra else ""
            raise ConfigError(
                f"the {name} push provider needs a package that is missing ({exc.name}){hint}"
            )
        sender: PushSender = getattr(module, class_name).from_options(options, vapid)
        if name == "log":
            senders.update(dict.fromkeys(SUBSCRIPTION_KINDS, sender))
        else:
            senders[name] = sender
    return PushProviders(names, senders, vapid, allow_private_hosts)


def _load_vapid(options: PushOptions, *, required: bool) -> VapidKeys | None:
    try:
        from chatd.push.vapid import VapidKeys, check_subject
    except ImportError as exc:
        if required:
            raise ConfigError(
                f"the webpush push provider needs a package that is missing ({exc.name}); "
                "install it with: pip install 'chatd[webpush]'"
            )
        logger.info("no VAPID keys: %s is not installed (no web push subscriptions)", exc.name)
        return None
    if required:
        return VapidKeys.load_or_create(options.data_dir, options.vapid_subject)
    check_subject(options.vapid_subject)  # a wrong setting is an error in every mode
    try:
        return VapidKeys.load_or_create(options.data_dir, options.vapid_subject)
    except ConfigError as exc:
        # Only a convenience in log mode: a read-only data dir must not stop the server.
        logger.warning("no VAPID keys, web push subscriptions disabled: %s", exc)
        return None


__all__ = ["PROVIDERS", "PushOptions", "PushProviders", "PushResult", "PushSender", "open_push"]
