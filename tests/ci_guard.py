"""Under ``CI=true`` no test may quietly stop being tested: every skip becomes a failure.

Individual fixtures already fail instead of skipping when their backend is missing
(``tests.conftest.require_backend``); this plugin is the net under them, so a skip added later
(a forgotten ``pytest.skip``, an ``importorskip``) cannot hide a backend from CI either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every test must run: {reason}"
