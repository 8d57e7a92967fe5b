"""`charter cert`: a certificate of Charter's CA for one part, for a media daemon on another
machine (charter up makes its own). Run on the controller's machine, where the CA is; copy
the output directory to the daemon and start it with --tls-dir DIR.

    charter cert --name mediad-7 --host 10.0.0.7 --out ./mediad-7-tls
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from charter import pki
from charter.config import default_state_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True,
                        help=f"the part it names: a daemon's --daemon-id (or {pki.CONTROLLER})")
    parser.add_argument("--host", action="append", default=[],
                        help="an address (IP or DNS name) the part is reached at; repeat for several "
                        "(127.0.0.1 and localhost are always included)")
    parser.add_argument("--tls-dir", default=os.environ.get("CHARTER_CONTROLLER_TLS_DIR",
                                                            str(default_state_dir() / "tls")),
                        help="the directory of Charter's CA (the controller's --tls-dir; the CA is made there "
                        "if it has none) [CHARTER_CONTROLLER_TLS_DIR, default %(default)s]")
    parser.add_argument("--out", required=True,
                        help="directory to write ca.pem, NAME.pem and NAME-key.pem to (made if missing)")


def run(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or "/" in name or name.startswith("."):
        print(f"charter cert: --name {args.name!r} is not a part's name such as mediad-7", file=sys.stderr)
        return 2
    ca_dir = Path(args.tls_dir)
    out = Path(args.out)
    try:
        if (ca_dir / "ca.pem").exists() and not (ca_dir / "ca-key.pem").exists():
            raise ValueError(f"{ca_dir} has the CA's certificate but not its key (ca-key.pem): run this where the "
                             "CA was made")
        pki.ensure_ca(ca_dir)
        out.mkdir(parents=True, exist_ok=True)
        if (out / f"{name}.pem").exists():
            raise ValueError(f"{out / (name + '.pem')} exists already: remove it to issue a new one")
        pki.issue_into(ca_dir, out, name, args.host)
    except (OSError, ValueError) as error:
        print(f"charter cert: {error}", file=sys.stderr)
        return 1
    print(f"{out / (name + '.pem')} and {out / (name + '-key.pem')} (signed by {ca_dir / 'ca.pem'}, copied "
          f"to {out / 'ca.pem'}): copy {out} to the part's machine and start it with --tls-dir {out}")
    return 0
