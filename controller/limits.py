"""How much of the controller one caller may take, so that no client (a bug, or someone
hostile) can make it grow without bound or starve the others: calls per second (a token
bucket), open watch streams and live conferences it created, per caller. A caller is the
holder of a token (its API key and grant) under --auth token, else the address it calls
from. Over a limit: RESOURCE_EXHAUSTED naming it and the setting that raises it."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from charter.errors import ResourceExhausted


@dataclass(frozen=True)
class Limits:
    calls_per_second: float = 2000.0
    """Per caller, sustained; bursts of twice that are let through."""
    watches_per_caller: int = 1000
    """Open WatchConference streams per caller."""
    participants_per_conference: int = 100
    tracks_per_participant: int = 16
    conferences_per_caller: int = 1000
    """Live conferences one caller created (counted while the controller runs)."""
    conferences_per_daemon: int = 5000
    """Conferences placement puts on one media daemon at most, however many endpoints it has free."""
    unused_conference_seconds: float = 300.0
    """A conference nobody joins (and not persistent) ends after this long."""
    max_message_bytes: int = 256 * 1024
    """The largest request the controller reads (an SDP offer is a few kB; at most 64 kB)."""


def caller_of(peer: str) -> str:
    """The caller of a gRPC peer string ("ipv4:127.0.0.1:51234" -> "ipv4:127.0.0.1")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0] or rest
        return f"{kind}:{host}"
    return peer


class CallerLimits:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """caller -> (tokens, when they were counted)."""
        self._watches: dict[str, int] = {}
        self._created: dict[str, set[str]] = {}
        """caller -> the conferences it created that may still be live."""

    def admit(self, caller: str) -> None:
        """One call of `caller`, or ResourceExhausted when it calls faster than allowed."""
        rate = self.limits.calls_per_second
        burst = 2 * rate
        now = self.clock()
        tokens, then = self._buckets.get(caller, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            raise ResourceExhausted(f"{caller} calls more than {rate:g} times a second (the controller's "
                                    "--max-calls-per-second): slow down and try again")
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # callers gone quiet are forgotten (a full bucket again)
            self._buckets = {c: (t, w) for c, (t, w) in self._buckets.items() if now - w < burst / rate}

    def created(self, caller: str) -> set[str]:
        """The conferences `caller` created that may still be live (the caller prunes the
        ended ones when it nears the limit)."""
        return self._created.setdefault(caller, set())

    def check_conferences(self, caller: str) -> None:
        most = self.limits.conferences_per_caller
        if len(self._created.get(caller, ())) >= most:
            raise ResourceExhausted(f"{caller} has created {most} conferences that have not ended, the most one "
                                    "caller may (the controller's --max-conferences-per-caller): end one first")

    @contextlib.contextmanager
    def watching(self, caller: str) -> Iterator[None]:
        """While a watch stream of `caller` is open; ResourceExhausted beyond the limit."""
        open_now = self._watches.get(caller, 0)
        if open_now >= self.limits.watches_per_caller:
            raise ResourceExhausted(f"{caller} has {open_now} watch streams open, the most one caller may "
                                    "(the controller's --max-watches-per-caller): close one first")
        self._watches[caller] = open_now + 1
        try:
            yield
        finally:
            left = self._watches[caller] - 1
            if left:
                self._watches[caller] = left
            else:
                del self._watches[caller]
