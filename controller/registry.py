"""Registry of media daemons: each holds a lease it renews with its load; a daemon whose
lease expires leaves placement at once (expiry is checked on every read, not only by the
sweeper, so placement never sees a daemon past its lease)."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from charter.errors import NotFound

log = logging.getLogger("controller.registry")


@dataclass(frozen=True)
class DaemonInfo:
    """A media daemon as it describes itself when it registers."""

    daemon_id: str
    grpc_address: str
    media_ip: str
    port_first: int
    port_last: int
    capacity: int
    region: str = ""
    """Where it runs (free text, as the operator names regions); "" for anywhere."""


@dataclass(frozen=True)
class DaemonLoad:
    endpoints: int = 0
    tracks: int = 0
    subscriptions: int = 0
    packets_in_per_second: float = 0.0
    packets_out_per_second: float = 0.0
    draining: bool = False


@dataclass
class DaemonRecord:
    info: DaemonInfo
    load: DaemonLoad
    lease_id: str
    expires_at: float
    """On the registry's clock (monotonic seconds)."""
    registered_at: float = field(default_factory=time.time)


class Registry:
    def __init__(self, lease_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self.lease_ttl = lease_ttl
        self.clock = clock
        self._daemons: dict[str, DaemonRecord] = {}
        self.on_drop: list[Callable[[DaemonRecord], None]] = []

    def register(self, info: DaemonInfo, load: DaemonLoad | None = None) -> DaemonRecord:
        """Add a daemon or replace its lease (it restarted, or this controller did)."""
        record = DaemonRecord(
            info=info,
            load=load or DaemonLoad(),
            lease_id=secrets.token_hex(8),
            expires_at=self.clock() + self.lease_ttl,
        )
        again = info.daemon_id in self._daemons
        self._daemons[info.daemon_id] = record
        log.info(
            "daemon registered again" if again else "daemon registered",
            extra={"daemon_id": info.daemon_id, "grpc_address": info.grpc_address, "capacity": info.capacity},
        )
        return record

    def mirror(self, records: list[tuple[DaemonRecord, float]]) -> None:
        """Make the live daemons exactly `records` (each with the seconds its lease has left),
        as a shared lease store holds them: new ones and new leases are taken, a daemon that
        is no longer there is dropped (its lease expired or it deregistered, perhaps at
        another controller)."""
        now = self.clock()
        seen = set()
        for shared, remaining in records:
            daemon_id = shared.info.daemon_id
            seen.add(daemon_id)
            record = self._daemons.get(daemon_id)
            if record is None or record.lease_id != shared.lease_id:
                log.info("daemon registered" if record is None else "daemon registered again",
                         extra={"daemon_id": daemon_id, "grpc_address": shared.info.grpc_address, "shared": True})
                record = DaemonRecord(shared.info, shared.load, shared.lease_id, now + remaining,
                                      shared.registered_at)
                self._daemons[daemon_id] = record
            else:
                record.load = shared.load
                record.expires_at = now + remaining
        for daemon_id in [d for d in self._daemons if d not in seen]:
            record = self._daemons.pop(daemon_id)
            log.warning("daemon lease ended", extra={"daemon_id": daemon_id, "shared": True})
            self._dropped(record)

    def keep_alive(self, daemon_id: str, lease_id: str, load: DaemonLoad) -> DaemonRecord:
        record = self._live_record(daemon_id, lease_id)
        record.load = load
        record.expires_at = self.clock() + self.lease_ttl
        return record

    def deregister(self, daemon_id: str, lease_id: str) -> None:
        record = self._live_record(daemon_id, lease_id)
        del self._daemons[daemon_id]
        log.info("daemon deregistered", extra={"daemon_id": daemon_id})
        self._dropped(record)

    def get(self, daemon_id: str) -> DaemonRecord | None:
        """The daemon if its lease is live."""
        self.expire()
        return self._daemons.get(daemon_id)

    def live(self) -> list[DaemonRecord]:
        """Daemons whose lease is live, by id."""
        self.expire()
        return [self._daemons[k] for k in sorted(self._daemons)]

    def expire(self) -> list[DaemonRecord]:
        """Drop every daemon past its lease; returns them."""
        now = self.clock()
        gone = [r for r in self._daemons.values() if r.expires_at <= now]
        for record in gone:
            del self._daemons[record.info.daemon_id]
            log.warning(
                "daemon lease expired",
                extra={"daemon_id": record.info.daemon_id, "lease_ttl": self.lease_ttl},
            )
            self._dropped(record)
        return gone

    async def sweep(self, period: float | None = None) -> None:
        """Expire leases in the background (reads expire them too; this logs them promptly)."""
        period = period or min(1.0, self.lease_ttl / 4)
        while True:
            await asyncio.sleep(period)
            self.expire()

    def _live_record(self, daemon_id: str, lease_id: str) -> DaemonRecord:
        self.expire()
        record = self._daemons.get(daemon_id)
        if record is None:
            raise NotFound(f"media daemon {daemon_id!r} has no live lease: register again")
        if record.lease_id != lease_id:
            raise NotFound(f"lease {lease_id!r} of media daemon {daemon_id!r} was replaced: register again")
        return record

    def _dropped(self, record: DaemonRecord) -> None:
        for callback in self.on_drop:
            try:
                callback(record)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("daemon drop listener failed")
