"""The ``chatd`` command: ``serve``, ``user add|disable|enable|passwd``, and operations.

Every failure the operator can fix is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import fields
from typing import Any

from chatd.config import Settings, load_settings, setting_help
from chatd.errors import ChatError, ConfigError

EXIT_USAGE = 2


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (also CHATD_CONFIG)")
    helps = setting_help()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None,
            help=f"{helps.get(f.name, '')} (CHATD_{f.name.upper()})",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="A self-hostable chat server.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server")
    _add_setting_flags(serve)

    user = commands.add_parser("user", help="manage accounts (password read from stdin)")
    user_commands = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("add", "create an account"),
        ("disable", "disable an account and end its sessions"),
        ("enable", "enable an account"),
        ("passwd", "set a new password and end all sessions"),
    ):
        sub = user_commands.add_parser(action, help=text)
        sub.add_argument("name")
        _add_setting_flags(sub)
    backup = commands.add_parser("backup", help="copy the SQLite store and media folder, online")
    backup.add_argument("path", help="a new, empty folder; use it later as --data-dir")
    _add_setting_flags(backup)
    doctor = commands.add_parser("doctor", help="check the configuration and every backend")
    _add_setting_flags(doctor)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return load_settings(flags, config_file=args.config)


def _setup_logging(settings: Settings) -> None:
    from chatd.logs import make_handler

    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    # On the root logger's handler, so that aiohttp's records get the request ids too.
    logging.basicConfig(level=level, handlers=[make_handler(settings.log_format)])


def _run_loop(main: Callable[[], Coroutine[Any, Any, Any]], use_uvloop: bool) -> Any:
    """Run on uvloop when it is installed and wanted: it roughly halves per-frame overhead."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise ChatError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def _user_command(settings: Settings, action: str, name: str) -> str:
    from chatd.app import now_ms
    from chatd.service.accounts import AccountService
    from chatd.store import open_store

    store = open_store(settings.store_url)
    await store.start()
    try:
        accounts = AccountService(store, now_ms, registration_open=False)
        if action == "add":
            user = await accounts.register(name, _read_password(name), by_operator=True)
            return f"created user {user.username}"
        if action == "disable":
            await accounts.disable(name)
            return f"disabled {name.casefold()} and ended their sessions"
        if action == "enable":
            await accounts.enable(name)
            return f"enabled {name.casefold()}"
        await accounts.set_password(name, _read_password(name))
        return f"changed the password of {name.casefold()} and ended their sessions"
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = _settings(args)
        if args.command == "serve":
            _setup_logging(settings)
            from chatd.app import serve

            _run_loop(lambda: serve(settings), settings.uvloop)
            return 0
        if args.command == "user":
            logging.basicConfig(level=logging.WARNING)
            print(asyncio.run(_user_command(settings, args.action, args.name)))
            return 0
        if args.command == "backup":
            from chatd.ops import backup

            print(asyncio.run(backup(settings, args.path)))
            return 0
        if args.command == "doctor":
            from chatd.ops import doctor

            healthy, lines = asyncio.run(doctor(settings))
            print("\n".join(lines))
            return 0 if healthy else 1
    except ConfigError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ChatError as exc:
        print(f"chatd: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
