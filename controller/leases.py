"""Where the media daemons' leases are kept: in this controller's Registry (one controller),
or in Redis, shared by several (`--store redis://`).

Shared leases: each daemon's lease is one Redis key whose expiry is the lease's, so it ends
by itself when its daemon stops renewing, whichever controller the daemon talked to. A
daemon may renew with any controller (the one it registered with died): the lease id is
checked in Redis. Every controller mirrors the keys into its own Registry a few times per
lease (placement reads that, without a round trip), and a daemon whose key is gone is
dropped there, so each controller moves its conferences; the moves take the conference's
lock and check where it is, so a conference moves once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from charter.errors import NotFound, Unavailable
from controller.registry import DaemonInfo, DaemonLoad, DaemonRecord, Registry

log = logging.getLogger("controller.leases")

PREFIX = "charter:daemon:"

# Renew or end a lease only if it is the one named (a daemon that registered again has another).
_KEEP = """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
if cjson.decode(value)['lease_id'] ~= ARGV[1] then return -1 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class Leases(Protocol):
    registry: Registry

    async def register(self, info: DaemonInfo, load: DaemonLoad) -> DaemonRecord: ...
    async def keep_alive(self, daemon_id: str, lease_id: str, load: DaemonLoad) -> None: ...
    async def deregister(self, daemon_id: str, lease_id: str) -> None: ...


class LocalLeases:
    """Leases in this controller's Registry only."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def register(self, info: DaemonInfo, load: DaemonLoad) -> DaemonRecord:
        return self.registry.register(info, load)

    async def keep_alive(self, daemon_id: str, lease_id: str, load: DaemonLoad) -> None:
        self.registry.keep_alive(daemon_id, lease_id, load)

    async def deregister(self, daemon_id: str, lease_id: str) -> None:
        self.registry.deregister(daemon_id, lease_id)


def _record_json(record: DaemonRecord) -> str:
    return json.dumps({"info": dataclasses.asdict(record.info), "load": dataclasses.asdict(record.load),
                       "lease_id": record.lease_id, "registered_at": record.registered_at}, separators=(",", ":"))


def _record_from(data: bytes | str) -> DaemonRecord:
    value = json.loads(data)
    return DaemonRecord(DaemonInfo(**value["info"]), DaemonLoad(**value["load"]), value["lease_id"], 0.0,
                        value["registered_at"])


class SharedLeases:
    def __init__(self, redis: Redis, registry: Registry, url: str) -> None:
        self.redis = redis
        self.registry = registry
        self.url = url
        self._keep = redis.register_script(_KEEP)

    @property
    def _ttl_ms(self) -> int:
        return int(self.registry.lease_ttl * 1000)

    async def register(self, info: DaemonInfo, load: DaemonLoad) -> DaemonRecord:
        record = DaemonRecord(info, load, secrets.token_hex(8), 0.0, time.time())
        try:
            await self.redis.set(PREFIX + info.daemon_id, _record_json(record), px=self._ttl_ms)
        except RedisError as error:
            raise Unavailable(f"the controller cannot reach its store at {self.url} to register the daemon "
                              f"({error}): try again") from None
        await self.refresh()
        return record

    async def keep_alive(self, daemon_id: str, lease_id: str, load: DaemonLoad) -> None:
        current = self.registry.get(daemon_id)
        if current is None or current.lease_id != lease_id:
            # Registered at another controller and not mirrored here yet: read it.
            await self.refresh()
            current = self.registry.get(daemon_id)
            if current is None or current.lease_id != lease_id:
                raise NotFound(f"lease {lease_id!r} of media daemon {daemon_id!r} is not live: register again")
        record = DaemonRecord(current.info, load, lease_id, 0.0, current.registered_at)
        await self._change(daemon_id, lease_id, _record_json(record), "renew the lease")
        current.load = load
        current.expires_at = self.registry.clock() + self.registry.lease_ttl

    async def deregister(self, daemon_id: str, lease_id: str) -> None:
        await self._change(daemon_id, lease_id, "", "end the lease")
        await self.refresh()

    async def _change(self, daemon_id: str, lease_id: str, value: str, what: str) -> None:
        try:
            done = await self._keep(keys=[PREFIX + daemon_id], args=[lease_id, value, self._ttl_ms])
        except RedisError as error:
            raise Unavailable(f"the controller cannot reach its store at {self.url} to {what} ({error}): "
                              "try again") from None
        if done == 0:
            raise NotFound(f"media daemon {daemon_id!r} has no live lease: register again")
        if done == -1:
            raise NotFound(f"lease {lease_id!r} of media daemon {daemon_id!r} was replaced: register again")

    async def refresh(self) -> None:
        """The Registry made to hold exactly the live leases in Redis."""
        keys = [key async for key in self.redis.scan_iter(match=PREFIX + "*", count=1000)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        records = []
        for value, ttl in zip(replies[0::2], replies[1::2], strict=True):
            if value is None or ttl is None or ttl <= 0:
                continue  # expired between the scan and the read
            try:
                records.append((_record_from(value), ttl / 1000))
            except (ValueError, KeyError, TypeError) as error:
                log.warning("a daemon lease in Redis does not read", extra={"error": str(error)})
        self.registry.mirror(records)

    async def run(self, period: float | None = None) -> None:
        """Mirror the shared leases a few times per lease, until cancelled."""
        period = period or min(0.5, self.registry.lease_ttl / 4)
        while True:
            try:
                await self.refresh()
            except RedisError as error:
                log.warning("cannot read the daemons' leases", extra={"url": self.url, "error": str(error)})
            await asyncio.sleep(period)
