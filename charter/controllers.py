"""How a client of the controller reaches it when there are several (controllers sharing one
store): one gRPC channel over all their addresses that uses one and moves to the next when it
stops answering (pick_first), so that a controller's death costs a retried call, not a
reconfiguration. The daemons' leases and the web gateway's pages live on this way."""
from __future__ import annotations

from charter import pki

ChannelOptions = list[tuple[str, str]]


def controller_target(controller: str, *, tls: bool = False) -> tuple[str, ChannelOptions]:
    """The gRPC target and channel options for `controller`: one host:port, or several
    (IP:port,IP:port) tried in turn. With `tls`, every controller's certificate is checked
    for the name they all carry ("charter-controller", charter/pki.py), whichever answers."""
    addresses = [a.strip() for a in controller.split(",") if a.strip()]
    if len(addresses) <= 1:
        return controller, []
    options = [("grpc.lb_policy_name", "pick_first")]
    if tls:
        options += [("grpc.ssl_target_name_override", pki.CONTROLLER), ("grpc.default_authority", pki.CONTROLLER)]
    return "ipv4:" + ",".join(addresses), options
