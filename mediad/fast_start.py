"""Fast start: a new video route that waits for a key frame gets one within a fraction of a
second even from a publisher that ignores key-frame requests (ffmpeg does; so do many SIP
gateways and cameras with key frames seconds apart).

The route asks the publisher first (media.py sends the request as the route is made). If it
still waits KEY_FRAME_WAIT later, it starts from the latest key frame its track's cache
holds whole (Subscription.start_replay): that frame and everything since, sent in paced
steps with the route's own numbers (a burst of a whole group of pictures would overflow the
receiver's socket), then the live stream without a gap. With no whole key frame cached it
keeps waiting, and tries again each RETRY while it waits (the publisher is asked again each
second by publisher_reports.py).

Counted in the RTCP map of the stats: fast_start (replays started), fast_start_done,
fast_start_behind (the cache moved past a replay: the route waits for the next key frame),
fast_start_no_key_frame (a look that found none cached)."""
from __future__ import annotations

import asyncio
from collections import Counter

from mediad import _forward

KEY_FRAME_WAIT = 0.3
"""Seconds a publisher has to answer the request before the cache is used."""
RETRY = 0.5
"""Seconds between looks at the cache while a route still waits."""
MAX_LOOKS = 20
PACE_PACKETS = 20
PACE_INTERVAL = 0.005
"""Twenty packets every 5 ms (4,000 a second): a 10-second group of pictures at 300 kbit/s
(about 300 packets) in under a tenth of a second, not all at once."""


class FastStart:
    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self._watched: set[_forward.Subscription] = set()

    def watch(self, subscription: _forward.Subscription) -> None:
        """Look after a route that waits for a key frame (a new one, or one resumed)."""
        if subscription in self._watched or not subscription.waiting_for_key_frame:
            return
        self._watched.add(subscription)
        asyncio.get_running_loop().call_later(KEY_FRAME_WAIT, self._look, subscription, 1)

    def _look(self, subscription: _forward.Subscription, looks: int) -> None:
        if not subscription.active or not subscription.waiting_for_key_frame:
            self._watched.discard(subscription)  # gone, or the publisher's key frame came
            return
        if subscription.start_replay():
            self.counts["fast_start"] += 1
            self._step(subscription)
            return
        self.counts["fast_start_no_key_frame"] += 1
        if looks >= MAX_LOOKS:
            self._watched.discard(subscription)
            return
        asyncio.get_running_loop().call_later(RETRY, self._look, subscription, looks + 1)

    def _step(self, subscription: _forward.Subscription) -> None:
        left = subscription.replay(PACE_PACKETS)
        if left > 0:
            asyncio.get_running_loop().call_later(PACE_INTERVAL, self._step, subscription)
            return
        self._watched.discard(subscription)
        self.counts["fast_start_done" if left == 0 else "fast_start_behind"] += 1
