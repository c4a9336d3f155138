"""docs/security.md keeps up with the settings: every limit and security setting is described,
with its current default, and no setting named like a limit escapes the list.

The list is ``chatd.config.SECURITY_SETTINGS``, kept by hand next to the settings. A naming
rule catches a new limit that was not added to it: any setting called ``max_*``, ``*_per_*``,
``*_burst``, ``*_timeout`` or ``*_ttl_*`` must be on the list.
"""

from __future__ import annotations

import re
from pathlib import Path

from chatd.config import SECURITY_SETTINGS, SETTING_NAMES, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
LIMIT_NAME = re.compile(r"^max_|_per_|_burst$|_timeout$|_ttl_")
MIB = 1024 * 1024


def glance_table() -> list[str]:
    """The rows of the "Limits at a glance" table."""
    text = DOC.read_text()
    section = text.split("## Limits at a glance", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def renderings(value: object) -> list[str]:
    """The ways the document may write a default: ``65,536`` or ``65536``, ``4 MiB``, ``30``
    for ``30.0``, ``false``, ```open```, ``empty`` for an empty list."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int):
        shown = [f"{value:,}", str(value)]
        if value % MIB == 0:
            shown.append(f"{value // MIB} MiB")
        return list(dict.fromkeys(shown))
    if isinstance(value, float):
        return [str(int(value))] if value.is_integer() else [str(value)]
    if isinstance(value, tuple):
        return ["empty"] if not value else [", ".join(value)]
    return [f"`{value}`"]


def test_every_setting_named_like_a_limit_is_listed() -> None:
    unlisted = [n for n in SETTING_NAMES if LIMIT_NAME.search(n) and n not in SECURITY_SETTINGS]
    assert not unlisted, (
        f"{unlisted} look like limits: add them to chatd.config.SECURITY_SETTINGS and describe "
        "them in docs/security.md"
    )


def test_the_list_names_real_settings_once() -> None:
    assert set(SECURITY_SETTINGS) <= set(SETTING_NAMES), set(SECURITY_SETTINGS) - set(SETTING_NAMES)
    assert len(set(SECURITY_SETTINGS)) == len(SECURITY_SETTINGS)


def test_every_listed_setting_is_described_with_its_default() -> None:
    text = DOC.read_text()
    rows = glance_table()
    defaults = Settings()
    problems = []
    for name in SECURITY_SETTINGS:
        if text.count(f"`{name}`") < 2:
            problems.append(f"{name}: not in the table and the text both")
            continue
        row = next((r for r in rows if f"`{name}` (" in r), None)
        if row is None:
            problems.append(f"{name}: no row of 'Limits at a glance' shows `{name}` (default)")
            continue
        shown = renderings(getattr(defaults, name))
        pattern = rf"`{name}` \((?:{'|'.join(map(re.escape, shown))})(?![\d.]|,\d)"
        if not re.search(pattern, row):
            problems.append(f"{name}: the table does not give its default as one of {shown}")
    assert not problems, "docs/security.md is out of date:\n" + "\n".join(problems)
