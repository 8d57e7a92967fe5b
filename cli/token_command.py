"""`charter token`: an access token for the ConferenceService (a JWT signed with one of the
controller's API keys), printed for a client to send as `authorization: Bearer <token>`:
grpcurl with -H, a service, the web gateway.

    charter token --conference standup --actions join,watch --participant alice --ttl 3600
    charter token --conference '*' --actions create,end,read,join,watch     # an operator's
"""
from __future__ import annotations

import argparse
import os
import sys

from charter.config import default_state_dir
from charter.tokens import ACTIONS, ApiKeys, Grant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conference", default="*", help="the conference it grants, or '*' for all (default *)")
    parser.add_argument("--actions", default=",".join(ACTIONS),
                        help=f"what it grants, comma-separated, of {', '.join(ACTIONS)} (default all)")
    parser.add_argument("--participant", default="", help="the one participant it acts as (default: any)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid (default %(default)s)")
    parser.add_argument("--api-keys", default=os.environ.get("CHARTER_CONTROLLER_API_KEYS",
                                                             str(default_state_dir() / "api-keys.json")),
                        help="the controller's API keys file [CHARTER_CONTROLLER_API_KEYS, default %(default)s]")
    parser.add_argument("--key-id", default="", help="which API key signs it (default: the first)")


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(args.api_keys):
        print(f"charter token: {args.api_keys} does not exist: start the controller once (it makes it), or "
              "give --api-keys", file=sys.stderr)
        return 1
    try:
        keys = ApiKeys(args.api_keys)
        if args.key_id and args.key_id not in keys.keys:
            raise ValueError(f"no API key {args.key_id!r} in {args.api_keys}")
        actions = tuple(a.strip() for a in args.actions.split(",") if a.strip())
        print(keys.token(Grant(args.conference, actions, args.participant), args.ttl, args.key_id))
    except ValueError as error:
        print(f"charter token: {error}", file=sys.stderr)
        return 2
    return 0
