"""The daemon registry with a clock the test moves: leases expire exactly at their TTL."""
from __future__ import annotations

import pytest

from charter.errors import NotFound
from controller.registry import DaemonInfo, DaemonLoad, Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def info(daemon_id: str = "d1") -> DaemonInfo:
    return DaemonInfo(daemon_id, "127.0.0.1:8443", "127.0.0.1", 20000, 20099, 100)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> Registry:
    return Registry(lease_ttl=10.0, clock=clock)


def test_a_lease_lasts_its_ttl_and_no_longer(registry: Registry, clock: Clock) -> None:
    registry.register(info())
    clock.now += 9.999
    assert [r.info.daemon_id for r in registry.live()] == ["d1"]
    clock.now += 0.001
    assert registry.live() == [] and registry.get("d1") is None


def test_renewal_extends_the_lease_and_records_load(registry: Registry, clock: Clock) -> None:
    lease = registry.register(info()).lease_id
    clock.now += 8
    registry.keep_alive("d1", lease, DaemonLoad(endpoints=7, draining=True))
    clock.now += 8
    record = registry.get("d1")
    assert record is not None and record.load.endpoints == 7 and record.load.draining


def test_renewal_after_expiry_asks_to_register_again(registry: Registry, clock: Clock) -> None:
    lease = registry.register(info()).lease_id
    clock.now += 10
    with pytest.raises(NotFound, match="register again"):
        registry.keep_alive("d1", lease, DaemonLoad())


def test_registering_again_replaces_the_lease(registry: Registry) -> None:
    old = registry.register(info()).lease_id
    new = registry.register(info()).lease_id
    assert old != new
    with pytest.raises(NotFound, match="replaced"):
        registry.keep_alive("d1", old, DaemonLoad())
    registry.keep_alive("d1", new, DaemonLoad())


def test_deregister_drops_at_once_and_tells_listeners(registry: Registry) -> None:
    dropped: list[str] = []
    registry.on_drop.append(lambda r: dropped.append(r.info.daemon_id))
    lease = registry.register(info()).lease_id
    registry.register(info("d2"))
    registry.deregister("d1", lease)
    assert [r.info.daemon_id for r in registry.live()] == ["d2"] and dropped == ["d1"]


def test_expiry_tells_listeners_once(registry: Registry, clock: Clock) -> None:
    dropped: list[str] = []
    registry.on_drop.append(lambda r: dropped.append(r.info.daemon_id))
    registry.register(info())
    clock.now += 11
    registry.expire()
    registry.expire()
    assert dropped == ["d1"]


def test_live_daemons_are_ordered_by_id(registry: Registry) -> None:
    for daemon_id in ("c", "a", "b"):
        registry.register(info(daemon_id))
    assert [r.info.daemon_id for r in registry.live()] == ["a", "b", "c"]


def test_lease_ttl_must_be_positive(clock: Clock) -> None:
    with pytest.raises(ValueError):
        Registry(0, clock=clock)
