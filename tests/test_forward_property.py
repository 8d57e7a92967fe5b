"""Random and mutated datagrams: the forwarder never raises, accounts for every datagram
exactly once, and keeps forwarding valid packets afterwards."""
from __future__ import annotations

from typing import Any

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forward_harness import Harness, counts, processed
from rtp import SUITES, build_rtcp_receiver_report, build_rtp, header_fields, one_byte_extension

TRACK_SSRC = 0x5EED
OUT_SSRC = 0x0C0FFEE

# A mutation applied to a freshly protected valid packet.
flips = st.tuples(st.just("flip"), st.integers(0, 4000), st.integers(0, 7))
truncations = st.tuples(st.just("truncate"), st.integers(0, 4000))
insertions = st.tuples(st.just("insert"), st.integers(0, 4000), st.binary(min_size=1, max_size=8))
mutations = st.lists(st.one_of(flips, truncations, insertions), min_size=1, max_size=4)

packet_shapes = st.fixed_dictionaries(
    {
        "payload": st.binary(max_size=64),
        "marker": st.booleans(),
        "csrcs": st.lists(st.integers(0, 2**32 - 1), max_size=3),
        "extension": st.one_of(st.none(), st.just(one_byte_extension([(1, b"\x01\x02")]))),
        "padding": st.integers(0, 3),
    }
)

datagram_sources = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("rtp-like"), st.integers(128, 191), st.binary(max_size=120)),
    st.tuples(st.just("mutated"), packet_shapes, mutations),
    st.tuples(st.just("mutated-rtcp"), mutations),
    st.tuples(st.just("valid"), packet_shapes),
    st.just(("replay",)),
)


def mutate(datagram: bytes, steps: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(datagram)
    for step in steps:
        if step[0] == "flip" and out:
            out[step[1] % len(out)] ^= 1 << step[2]
        elif step[0] == "truncate":
            del out[step[1] % (len(out) + 1) :]
        elif step[0] == "insert":
            position = step[1] % (len(out) + 1)
            out[position:position] = step[2]
    return bytes(out)


def test_random_and_mutated_datagrams() -> None:
    harness = Harness(uvloop.new_event_loop())
    try:
        run_property(harness)
    finally:
        harness.close()


def run_property(harness: Harness) -> None:
    publishers = {suite: harness.participant(suite, name=suite) for suite in SUITES}
    subscriber = harness.participant(name="subscriber")
    for i, publisher in enumerate(publishers.values()):
        publisher.endpoint.add_track(TRACK_SSRC).subscribe(subscriber.endpoint, OUT_SSRC + i)
    state = {"seq": 0, "sent": 0, "forwarded": 0}
    accepted: dict[str, list[bytes]] = {suite: [] for suite in SUITES}

    def next_packet(shape: dict[str, Any]) -> bytes:
        state["seq"] += 1
        return build_rtp(state["seq"], 3000 * state["seq"], TRACK_SSRC, **shape)

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(suite=st.sampled_from(SUITES), sources=st.lists(datagram_sources, max_size=12))
    def check(suite: str, sources: list[tuple[Any, ...]]) -> None:
        publisher = publishers[suite]
        endpoint, peer = publisher.endpoint, publisher.peer
        before = processed(endpoint)
        packets_in_before = endpoint.counters.packets_in
        valid = 0
        for source in sources:
            kind = source[0]
            if kind == "random":
                datagram = source[1]
            elif kind == "rtp-like":
                datagram = bytes([source[1]]) + source[2]
            elif kind == "mutated":
                datagram = mutate(peer.protect(next_packet(source[1])), source[2])
            elif kind == "mutated-rtcp":
                datagram = mutate(peer.protect_rtcp(build_rtcp_receiver_report(TRACK_SSRC)), source[1])
            elif kind == "valid":
                datagram = peer.protect(next_packet(source[1]))
                accepted[suite].append(datagram)
                valid += 1
            else:
                datagram = accepted[suite][-1] if accepted[suite] else b""
            peer.send_raw(datagram)
        state["sent"] += len(sources)
        # Every datagram is forwarded, consumed as RTCP or counted under exactly one reason.
        harness.settle(endpoint, before + len(sources))
        # Each valid packet got through, whatever hostile datagrams came before it (a mutation
        # that undoes itself yields one more).
        assert endpoint.counters.packets_in - packets_in_before >= valid
        # Valid packets still flow afterwards.
        final = next_packet({"payload": b"still flowing"})
        peer.send(final)
        harness.wait(
            lambda: bool(subscriber.peer.received)
            and subscriber.peer.received[-1].plain is not None
            and subscriber.peer.received[-1].plain[12:] == b"still flowing"
            and header_fields(subscriber.peer.received[-1].plain)[0] == state["seq"] & 0xFFFF,
            "the valid packet after the hostile ones",
        )
        assert processed(endpoint) == before + len(sources) + 1
        state["sent"] += 1
        harness.check_errors()

    check()
    total = counts(harness.forwarder)
    assert total["packets_in"] + total["rtcp_in"] + sum(total["drops"].values()) == state["sent"]
    # Everything the subscriber got decrypts with its key: nothing forged got through.
    assert len(subscriber.peer.plain) == subscriber.endpoint.counters.packets_out
