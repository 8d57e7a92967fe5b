"""The shared store: conference state in Redis, for several controllers in front of one
Redis (`charter controller --store redis://host:port/db`). Nothing is kept in the process:
every read goes to Redis, so any controller sees what any other wrote.

- A conference is one key holding its record (the same JSON as the SQLite store's, SRTP keys
  sealed with AES-GCM under `--store-key`, a file every controller of one Redis shares).
  An index of ids (a sorted set, for pages) and of placements (a hash: daemon and
  participants per conference, for placement) change in the same MULTI/EXEC as the record.
- Changes to one conference happen under a lock every controller honours: a key set with
  NX and an expiry that the holder renews while it works, so a controller killed while it
  holds one blocks that conference for LOCK_SECONDS at most.
- Events of a conference are a sorted set by sequence number (the last EVENTS_KEPT), written
  in the transaction of the change they describe, and PUBLISHed on one channel in that same
  transaction, so every controller's watchers hear of them; a watcher that sees a gap reads
  it back from the sorted set (controller/events.py).

A call that cannot reach Redis fails with UNAVAILABLE naming it and changes nothing; the
relay of events reconnects by itself and has its watchers read what they missed.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from charter.errors import Unavailable
from controller.events import ConferenceEnded, Event, EventHub
from controller.model import Conference
from controller.records import RecordError, conference_from, conference_record, event_from, event_record
from controller.sqlite_store import SealingKey, StoreError
from controller.store import EVENTS_KEPT, ConferenceLocks, DaemonUsage, endpoints_per_daemon

log = logging.getLogger("controller.store")

PREFIX = "charter:"
CHANNEL = PREFIX + "events"
LOCK_SECONDS = 10.0
"""How long a lock outlives a controller that died holding it."""
LOCK_WAIT_SECONDS = 30.0
"""A call that cannot have its conference's lock for this long fails with UNAVAILABLE."""

T = TypeVar("T")

# Compare-and-delete and compare-and-extend of a lock: only its holder may release or renew it.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
          "else return 0 end")
# Where a conference is placed and what it holds on each daemon ("HOME;D1=N1,D2=N2" in
# PLACED), and the totals per daemon that placement reads (USAGE: "DAEMON c" conferences
# placed on it, "DAEMON e" endpoints), kept together. apply() adds (sign 1) or takes away
# (sign -1) one placement's counts.
_APPLY = """
local function apply(usage, value, sign)
  local home, rest = string.match(value, '^([^;]*);(.*)$')
  if home ~= '' then redis.call('HINCRBY', usage, home .. ' c', sign) end
  for daemon, count in string.gmatch(rest, '([^,=]+)=(%d+)') do
    if count ~= '0' then redis.call('HINCRBY', usage, daemon .. ' e', sign * tonumber(count)) end
  end
end
"""
# KEYS: PLACED, USAGE; ARGV: id, placement ("" when the conference is gone).
_PLACE = _APPLY + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then apply(KEYS[2], old, -1) end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
apply(KEYS[2], ARGV[2], 1)
return 1
"""
# A new conference: the record only if its id is free, with its index and placement.
# KEYS: record, IDS, PLACED, USAGE; ARGV: record, id, placement.
_ADD = _APPLY + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
apply(KEYS[4], ARGV[3], 1)
return 1
"""


def _key(conference_id: str) -> str:
    return f"{PREFIX}conference:{conference_id}"


def _events_key(conference_id: str) -> str:
    return f"{PREFIX}events:{conference_id}"


def _lock_key(conference_id: str) -> str:
    return f"{PREFIX}lock:{conference_id}"


IDS = PREFIX + "conferences"
PLACED = PREFIX + "placed"
USAGE = PREFIX + "usage"


def _text(value: object) -> str:
    """A reply of redis-py (bytes: the client does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    durable = True

    def __init__(self, url: str, key_path: Path | str) -> None:
        self.url = url
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        """The client, also for what else the controllers share there (controller/leases.py)."""
        self._key = SealingKey(Path(key_path))
        self._local = ConferenceLocks()
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._add = self.redis.register_script(_ADD)
        self._place = self.redis.register_script(_PLACE)
        self.origin = secrets.token_hex(8)
        """This process, in what it publishes: its own events reach its watchers directly."""
        self._own = b'{"origin":"%s"' % self.origin.encode()

    @classmethod
    async def connect(cls, url: str, key_path: Path | str) -> RedisStore:
        """A store whose Redis answered; StoreError naming it otherwise."""
        try:
            store = cls(url, key_path)
            await store.redis.ping()
        except (RedisError, ValueError) as error:
            raise StoreError(f"cannot reach Redis at {url} ({error}): start it, or give --store another URL") from None
        return store

    async def _call(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except RedisError as error:
            raise Unavailable(f"the controller cannot reach its store at {self.url} to {what} ({error}): "
                              "nothing was changed; try again") from None

    # --- locks ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, conference_id: str) -> AsyncIterator[None]:
        # Tasks of this process queue on a local lock first: one of them at a time asks Redis.
        async with self._local.lock(conference_id):
            key, token = _lock_key(conference_id), secrets.token_hex(16)
            await self._call(f"lock conference {conference_id!r}", lambda: self._acquire(key, token, conference_id))
            renewing = asyncio.get_running_loop().create_task(self._keep(key, token))
            try:
                yield
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                with contextlib.suppress(RedisError):
                    await self._release(keys=[key], args=[token])

    async def _acquire(self, key: str, token: str, conference_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_SECONDS
        delay = 0.001
        while not await self.redis.set(key, token, nx=True, px=int(LOCK_SECONDS * 1000)):
            if loop.time() > deadline:
                raise Unavailable(f"conference {conference_id!r} is busy (another controller holds it): try again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_SECONDS / 3)
            with contextlib.suppress(RedisError):
                await self._renew(keys=[key], args=[token, int(LOCK_SECONDS * 1000)])

    # --- ConferenceStore -----------------------------------------------------------------

    def _record(self, conference: Conference) -> str:
        return json.dumps(conference_record(conference, self._key.seal), separators=(",", ":"))

    def _conference(self, data: bytes | str) -> Conference:
        try:
            return conference_from(json.loads(data), self._key.unseal)
        except (RecordError, json.JSONDecodeError) as error:
            raise Unavailable(f"a conference in {self.url} does not read back ({error}): is --store-key the file "
                              "the other controllers use?") from None

    async def get(self, conference_id: str) -> Conference | None:
        data = await self._call("read a conference", lambda: self.redis.get(_key(conference_id)))
        return None if data is None else self._conference(data)

    async def add(self, conference: Conference) -> bool:
        conference_id = conference.conference_id
        added = await self._call("add a conference", lambda: self._add(
            keys=[_key(conference_id), IDS, PLACED, USAGE],
            args=[self._record(conference), *self._placed(conference)]))
        return bool(added)

    @staticmethod
    def _placed(conference: Conference) -> list[str]:
        counts = ",".join(f"{d}={n}" for d, n in sorted(endpoints_per_daemon(conference).items()) if d)
        return [conference.conference_id, f"{conference.daemon_id};{counts}"]

    async def put(self, conference: Conference, events: Sequence[Event] = ()) -> None:
        conference_id = conference.conference_id
        records = self._event_texts(events)

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as tx:
                tx.set(_key(conference_id), self._record(conference))
                tx.zadd(IDS, {conference_id: 0})
                await self._place(keys=[PLACED, USAGE], args=self._placed(conference), client=tx)
                if events:
                    tx.zadd(_events_key(conference_id), {r: e.sequence for r, e in zip(records, events, strict=True)})
                    tx.zremrangebyscore(_events_key(conference_id), "-inf", events[-1].sequence - EVENTS_KEPT)
                    tx.publish(CHANNEL, self._message(conference_id, records))
                await tx.execute()

        await self._call(f"write conference {conference_id!r}", write)

    async def delete(self, conference_id: str, events: Sequence[Event] = ()) -> None:
        records = self._event_texts(events)

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as tx:
                tx.delete(_key(conference_id), _events_key(conference_id))
                tx.zrem(IDS, conference_id)
                await self._place(keys=[PLACED, USAGE], args=[conference_id, ""], client=tx)
                if records:
                    tx.publish(CHANNEL, self._message(conference_id, records))
                await tx.execute()

        await self._call(f"delete conference {conference_id!r}", write)

    async def events_after(self, conference_id: str, sequence: int) -> list[Event] | None:
        conference = await self.get(conference_id)
        if conference is None or sequence >= conference.sequence:
            return []
        rows = await self._call("read events", lambda: self.redis.zrangebyscore(
            _events_key(conference_id), f"({sequence}", "+inf"))
        events = [self._event(conference_id, _text(row)) for row in rows]
        if not events or events[0].sequence > sequence + 1:
            return None
        return events

    async def page(self, after: str = "", limit: int = 100) -> list[Conference]:
        ids = await self._call("list conferences", lambda: self.redis.zrangebylex(
            IDS, f"({after}" if after else "-", "+", start=0, num=limit))
        if not ids:
            return []
        rows = await self._call("read conferences", lambda: self.redis.mget([_key(_text(i)) for i in ids]))
        return [self._conference(row) for row in rows if row is not None]

    async def ids(self) -> list[str]:
        return [_text(i) for i in await self._call("list conferences", lambda: self.redis.zrange(IDS, 0, -1))]

    async def daemon_usage(self) -> dict[str, DaemonUsage]:
        totals = await self._call("read placements", lambda: self.redis.hgetall(USAGE))
        usage: dict[str, list[int]] = {}
        for field, value in totals.items():
            daemon_id, _, what = _text(field).rpartition(" ")
            counts = usage.setdefault(daemon_id, [0, 0])
            counts[0 if what == "c" else 1] = int(value)
        return {d: DaemonUsage(c, e) for d, (c, e) in usage.items() if c > 0 or e > 0}

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.redis.aclose()

    # --- events to every controller's watchers -------------------------------------------

    def _event_texts(self, events: Sequence[Event]) -> list[str]:
        return [json.dumps(event_record(e, self._key.seal), separators=(",", ":")) for e in events]

    def _message(self, conference_id: str, records: list[str]) -> str:
        # The records are JSON already: put in as they are (and "origin" first, see _deliver).
        head = json.dumps({"origin": self.origin, "conference_id": conference_id}, separators=(",", ":"))
        return f'{head[:-1]},"events":[{",".join(records)}]}}'

    def _event(self, conference_id: str, data: str | dict[str, Any]) -> Event:
        record = data if isinstance(data, dict) else json.loads(data)
        return event_from(conference_id, record, self._key.unseal)

    async def relay(self, hub: EventHub, retry: float = 0.5) -> None:
        """Hand `hub` the events other controllers publish, until cancelled. After Redis was
        lost, every watcher of `hub` reads back what it may have missed."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    hub.resync_all()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self._deliver(hub, message["data"])
            except RedisError as error:
                log.warning("event relay lost Redis; connecting again", extra={"url": self.url, "error": str(error)})
                await asyncio.sleep(retry)

    def _deliver(self, hub: EventHub, data: bytes) -> None:
        if data.startswith(self._own):
            return  # this controller's own events reached its watchers directly
        try:
            message = json.loads(data)
            if message["origin"] == self.origin:
                return
            conference_id = message["conference_id"]
            events = [self._event(conference_id, record) for record in message["events"]]
        except (ValueError, KeyError, TypeError, RecordError) as error:
            log.warning("event relay: a message that does not read", extra={"error": str(error)})
            return
        hub.publish(conference_id, events)
        if any(isinstance(e.body, ConferenceEnded) for e in events):
            hub.end(conference_id)
