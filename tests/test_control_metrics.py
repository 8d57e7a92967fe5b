"""Prometheus metrics of a real `charter up` during a real conference: what /metrics of the
daemon and of the controller say moves with the traffic and the calls (packets, drops by
reason, endpoints, conferences, participants, RPC latencies by method and code, leases)."""
from __future__ import annotations

import random
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from charter.v1 import controller_pb2 as pb
from charter_up import CharterUp, charter_up
from participants import Peer, exchange


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_traffic_and_the_calls(charter: CharterUp) -> None:
    controller_url, daemon_url = charter.metrics_urls
    before = scrape(daemon_url), scrape(controller_url)
    charter.create_conference("metered")
    alice, bob = Peer("alice", [random.randrange(1, 2**32)]), Peer("bob", [random.randrange(1, 2**32)])
    try:
        with grpc.insecure_channel(charter.controller_address) as channel:
            from charter.v1 import controller_pb2_grpc

            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            for peer in (alice, bob):
                peer.joined(api.Join(peer.join_request("metered", give_address=True), timeout=10).participant)
        exchange([alice, bob], lambda: sum(alice.counts().values()) >= 20 and sum(bob.counts().values()) >= 20)
        # A datagram that is not RTP, counted by its reason.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x05not rtp", (alice.session.media_address.ip, alice.session.media_address.port))
        exchange([alice, bob], lambda: sum(alice.counts().values()) >= 25)
        daemon, controller = scrape(daemon_url), scrape(controller_url)
        assert value(daemon, "charter_mediad_endpoints") == 2 and value(daemon, "charter_mediad_subscriptions") == 2
        received = sum(alice.counts().values()) + sum(bob.counts().values())
        sent = value(daemon, "charter_mediad_packets_out_total") - value(before[0], "charter_mediad_packets_out_total")
        assert sent >= received
        assert value(daemon, "charter_mediad_packets_in_total") > value(before[0], "charter_mediad_packets_in_total")
        assert value(daemon, "charter_mediad_drops_total", reason="bad_version") \
            == value(before[0], "charter_mediad_drops_total", reason="bad_version") + 1
        assert value(controller, "charter_controller_conferences") >= 1
        assert value(controller, "charter_controller_participants") >= 2
        assert value(controller, "charter_controller_daemon_lease_seconds", daemon_id="mediad-0") > 0
        joins = value(controller, "charter_rpc_seconds_count", method="Join", code="OK")
        assert joins - value(before[1], "charter_rpc_seconds_count", method="Join", code="OK") == 2
        # A refused call is counted with its code.
        with grpc.insecure_channel(charter.controller_address) as channel:
            with pytest.raises(grpc.RpcError):
                controller_pb2_grpc.ConferenceServiceStub(channel).GetConference(
                    pb.GetConferenceRequest(conference_id="nowhere"), timeout=10)
        assert value(scrape(controller_url), "charter_rpc_seconds_count", method="GetConference", code="NOT_FOUND") >= 1
    finally:
        alice.close()
        bob.close()
        charter.end_conference("metered")


def test_the_grafana_dashboard_reads_metrics_that_exist(charter: CharterUp) -> None:
    import json

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-charter.json").read_text())
    names = set()
    for url in charter.metrics_urls:
        with urllib.request.urlopen(url, timeout=10) as reply:
            for family in text_string_to_metric_families(reply.read().decode()):
                # A family is declared even before it has samples (a counter with no events yet).
                names |= {family.name, f"{family.name}_total"} | {s.name for s in family.samples}
    queried = {word for panel in dashboard["panels"] for target in panel.get("targets", [])
               for word in _names(target["expr"])}
    assert queried and queried <= names, sorted(queried - names)


def _names(expr: str) -> set[str]:
    import re

    return {m for m in re.findall(r"charter_[a-z_]+", expr)}
