"""Small waits of the tests: for a condition to hold, for decoded-frame counts to settle."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def wait_until(
    condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `condition` until it is true; AssertionError once `timeout` has passed without.
    The condition is asked at least once, and once more after the last pause."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def settle(counts: Callable[[], Sequence[int]], *, quiet: float = 2.0, timeout: float = 30.0) -> None:
    """Wait until decoded-frame counts stop growing for `quiet` seconds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    last = list(counts())
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = list(counts())
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
