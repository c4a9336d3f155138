"""What a ``rate_limited`` answer tells the client to wait."""

from __future__ import annotations

import pytest

from chatd.errors import RateLimited


@pytest.mark.parametrize(
    ("wait", "shown"),
    [(1e-12, 0.001), (0.05, 0.05), (0.0501, 0.051), (5.9941, 5.995), (1200.0, 1200.0)],
)
def test_retry_after_is_rounded_up_to_the_millisecond(wait: float, shown: float) -> None:
    """A bucket a float's hair short of a token must not answer "retry in 0 s"."""
    error = RateLimited("slow down", retry_after=wait)
    assert error.extra["retry_after"] == shown
    assert error.retry_after == wait
