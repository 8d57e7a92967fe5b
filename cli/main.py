"""The `charter` command. Each subcommand is one row of COMMANDS: a module with
`add_arguments(parser)` and `run(args) -> exit code`, imported only when it runs."""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str
    """Module with add_arguments(parser) and run(args) -> int."""


COMMANDS = [
    Command("up", "run the controller and N media daemons on this machine until Ctrl-C", "cli.up"),
    Command("controller", "run the controller (the gRPC API of conferences)", "controller.server"),
    Command("mediad", "run a media daemon (the SRTP forwarding unit)", "mediad.server"),
    Command("demo", "start Charter, run a conference of N participants with live statistics, stop", "cli.demo"),
    Command("web", "serve the conference page for browsers: a gateway from WebSocket to the controller", "cli.web"),
    Command("sdp", "print a participant's media session as SDP (for ffmpeg, GStreamer, SIP)", "cli.sdp_command"),
    Command("cert", "issue a certificate of Charter's CA for a media daemon on another machine", "cli.cert_command"),
    Command("token", "print an access token for the controller's API (a signed JWT with grants)", "cli.token_command"),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="charter", description="Charter: an SRTP SFU with a gRPC control plane")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = {c.name: c for c in COMMANDS}
    for command in COMMANDS:
        commands.add_parser(command.name, help=command.help, add_help=False)
    if not argv or argv[0] not in names:
        parser.parse_args(argv)  # prints usage or the error and exits
        return 2
    command = names[argv[0]]
    module = importlib.import_module(command.module)
    sub = argparse.ArgumentParser(prog=f"charter {command.name}", description=command.help)
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(argv[1:])))


if __name__ == "__main__":
    sys.exit(main())
