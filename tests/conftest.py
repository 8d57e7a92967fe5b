"""Shared fixtures."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from forward_harness import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A mediad._forward Forwarder on a fresh uvloop loop, closed after the test; fails the
    test if the loop reported any exception (nothing may escape the hot path)."""
    import uvloop

    from forward_harness import Harness

    h = Harness(uvloop.new_event_loop())
    try:
        yield h
        h.check_errors()
    finally:
        h.close()
