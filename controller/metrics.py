"""The controller's Prometheus metrics: conferences, participants and unplaced conferences
(from its store, read when /metrics is scraped), and every daemon's lease (time left,
endpoints it holds by the store and by its own report, draining). RPC latencies come from
charter.metrics."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.conferences import Conferences


class ControllerCollector(Collector):
    def __init__(self, conferences: Conferences) -> None:
        self.conferences = conferences
        self._counts = (0, 0, 0)
        self._usage: dict[str, int] = {}

    async def refresh(self) -> None:
        """Read the store (its calls are async) before the scrape is answered."""
        conferences = await self.conferences.store.page(limit=1 << 30)
        self._counts = (len(conferences), sum(len(c.participants) for c in conferences),
                        sum(1 for c in conferences if not c.daemon_id))
        self._usage = {d: u.endpoints for d, u in (await self.conferences.store.daemon_usage()).items()}

    def collect(self) -> Iterator[Metric]:
        conferences, participants, unplaced = self._counts
        yield GaugeMetricFamily("charter_controller_conferences", "conferences", value=conferences)
        yield GaugeMetricFamily("charter_controller_participants", "participants of every conference",
                                value=participants)
        yield GaugeMetricFamily("charter_controller_conferences_unplaced",
                                "conferences waiting for a media daemon with room", value=unplaced)
        registry = self.conferences.registry
        live = registry.live()
        yield GaugeMetricFamily("charter_controller_daemons", "media daemons with a live lease", value=len(live))
        lease = GaugeMetricFamily("charter_controller_daemon_lease_seconds", "seconds left of a daemon's lease",
                                  labels=["daemon_id"])
        assigned = GaugeMetricFamily("charter_controller_daemon_endpoints",
                                     "endpoints of a daemon: assigned by the store, or as it reports",
                                     labels=["daemon_id", "by"])
        draining = GaugeMetricFamily("charter_controller_daemon_draining", "1 while a daemon drains",
                                     labels=["daemon_id"])
        now = registry.clock()
        for record in live:
            daemon_id = record.info.daemon_id
            lease.add_metric([daemon_id], max(0.0, record.expires_at - now))
            assigned.add_metric([daemon_id, "store"], self._usage.get(daemon_id, 0))
            assigned.add_metric([daemon_id, "daemon"], record.load.endpoints)
            draining.add_metric([daemon_id], int(record.load.draining))
        yield lease
        yield assigned
        yield draining
