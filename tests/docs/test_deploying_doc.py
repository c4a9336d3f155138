"""docs/deploying.md shows the example files of config/ as they are: a change to one of them
must reach the page (or the page must stop claiming to show it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["chatd.service", "nginx.conf", "Caddyfile"])
def test_each_example_file_is_shown_whole(name: str) -> None:
    page = (ROOT / "docs" / "deploying.md").read_text()
    example = (ROOT / "config" / name).read_text().strip()
    assert example in page, f"docs/deploying.md does not show config/{name} as it is now"
