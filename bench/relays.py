"""The relays under test as the forwarding benchmark drives them: a relay in its own process
(bench/relay_process.py line protocol: charter, reference, python, and charter@base, the
Charter relay of another checkout), and rtpengine with a fresh call per trial."""
from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._loadgen import LoadGen
from bench.relay_process import RelayConfig, Subscriber
from bench.rtpengine_peer import Call, RtpEngine
from bench.settings import PUBLISHER_SSRC, REPO
from charter.processes import die_with_parent, stop
from charter.suites import generate_key

RELAY_MODULES = {
    "charter": "bench.charter_relay",
    "webrtc": "bench.webrtc_relay",  # Charter with endpoints and routes as a browser's
    "reference": "bench.ref_relay",
    "python": "bench.py_forwarder",
}
BASELINE = "charter@base"  # the name of the baseline checkout's Charter relay in the results


@dataclass(frozen=True)
class Baseline:
    """Another checkout of this repository (an earlier commit, its extensions built in place
    with `python setup.py build_ext --inplace`) whose Charter relay runs as charter@base."""

    root: Path
    rev: str

    @classmethod
    def open(cls, path: Path) -> Baseline:
        root = path.resolve()
        if not (root / "bench" / "charter_relay.py").is_file():
            raise ValueError(f"{root} is not a checkout of this repository (no bench/charter_relay.py)")
        if root == REPO:
            raise ValueError(f"{root} is this checkout: the baseline must be another one")
        pyx = root / "mediad" / "_forward.pyx"
        built = sorted((root / "mediad").glob("_forward.*.so"))
        if not built:
            raise ValueError(f"{root}/mediad/_forward is not built: "
                             f"run `python setup.py build_ext --inplace` in {root}")
        if pyx.exists() and max(b.stat().st_mtime for b in built) < pyx.stat().st_mtime:
            print(f"warning: {built[0]} is older than {pyx}: rebuild it "
                  f"(`python setup.py build_ext --inplace` in {root})", flush=True)
        try:
            rev = git_rev(root)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ValueError(f"{root}: git rev-parse failed: {exc}") from None
        return cls(root, rev)

    def to_json(self) -> dict[str, str]:
        """What the results file says of the baseline, and of the checkout measured against it."""
        try:
            charter_rev = git_rev(REPO)
            if git(REPO, "status", "--porcelain", "--untracked-files=no"):
                charter_rev += " + uncommitted changes"
        except (OSError, subprocess.CalledProcessError):
            charter_rev = "this checkout"
        return {"relay": BASELINE, "dir": str(self.root), "rev": self.rev, "charter_rev": charter_rev}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def git_rev(root: Path) -> str:
    """The checkout's commit, as `git rev-parse --short HEAD` names it."""
    return git(root, "rev-parse", "--short", "HEAD")


def loaded_forwarding_cores(pid: int) -> list[str]:
    """The mediad._forward extension files a process has mapped (/proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split(None, 5)[5].strip() for line in f
                       if "/mediad/_forward" in line and len(line.split(None, 5)) == 6})


class ProcessRelay:
    """A relay in its own process (bench/relay_process.py line protocol). `root` is the
    checkout whose code it runs (cwd and first on PYTHONPATH): this one, or a baseline's."""

    def __init__(self, kind: str, config: RelayConfig, *, nice: int = 0, timeout: float = 60.0,
                 name: str | None = None, root: Path = REPO) -> None:
        self.kind = kind
        self.name = name or kind
        self.root = root
        self.config = config
        self.nice = nice
        self.timeout = timeout
        self.restarts = 0
        self.verified: list[dict[str, Any]] = []
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [sys.executable, "-m", RELAY_MODULES[self.kind], self.config.to_json()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.root, env=env,
            preexec_fn=self._preexec,
        )
        try:
            info = json.loads(self._readline(self.timeout))
            self.pid: int = info["pid"]
            if self.root != REPO and self.kind == "charter":
                self._check_origin()
        except BaseException:
            self.close()
            raise
        self.address: tuple[str, int] = (info["publisher"][0], int(info["publisher"][1]))
        self.info = info
        self._session: tuple[Any, ...] | None = None

    def _check_origin(self) -> None:
        """The relay really runs the other checkout's forwarding core, not this one's."""
        cores = loaded_forwarding_cores(self.pid)
        if not cores or any(not Path(c).is_relative_to(self.root) for c in cores):
            raise RuntimeError(f"{self.name} should run {self.root}/mediad/_forward but has mapped {cores or 'none'}")

    def _preexec(self) -> None:
        die_with_parent()
        if self.nice:
            os.nice(self.nice)

    def restart(self) -> None:
        """A relay whose inbound session lost the rollover counter (it missed more than
        2^15 packets in a row, e.g. while another process held its core) rejects every
        packet from then on: only a new session brings it back."""
        self.close()
        self.restarts += 1
        self._start()

    @property
    def fresh(self) -> bool:
        """No packet sent yet: its outbound streams are still in their first rollover, so a
        new pylibsrtp session can decrypt what the receivers captured."""
        return self._session is None

    def rejected(self) -> int:
        """Packets the relay refused (authentication, replay, ...); the generator never
        sends a bad one, so any is a lost SRTP context. Charter's relay (this checkout's and
        older ones, whose reply is Forwarder.stats()) counts them in "drops", a dict of
        reason -> count; the reference and Python relays in "dropped"."""
        stats = self.stats()
        drops = stats.get("drops")
        if isinstance(drops, dict):
            return int(sum(drops.values()))
        if isinstance(drops, list):
            return int(sum(drops))
        return int(stats.get("dropped", 0))

    def _readline(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"{self.name} relay gave no answer (exit code {self.process.poll()})")
        return line

    def before_trial(self, gen: LoadGen) -> None:
        # Several relays may share one generator: each resumes its own outbound session, so
        # its replay window and rollover counter see one continuous stream.
        gen.set_target(*self.address)
        if self._session is None:
            gen.set_key(self.config.suite, self.config.publisher_key, first_index=random.randrange(1000, 30000))
        else:
            gen.restore_session(self._session)

    def after_trial(self, gen: LoadGen) -> None:
        self._session = gen.save_session()

    @property
    def subscriber_keys(self) -> list[bytes]:
        return [s.key for s in self.config.subscribers]

    @property
    def subscriber_ssrcs(self) -> list[int] | None:
        return [s.ssrc for s in self.config.subscribers]

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        stats: dict[str, Any] = json.loads(self._readline(10.0))
        return stats

    def close(self) -> None:
        """Closing stdin ends a relay; one that does not end within 10 s is stopped."""
        if self.process.poll() is None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                stop(self.process, 5)
        if self.process.stdout:
            self.process.stdout.close()


class RtpEngineRelay:
    """rtpengine with a fresh re-keying call per trial: a run that overloads it can leave the
    call discarding, so no trial inherits another's state."""

    kind = name = "rtpengine"

    def __init__(self, suite: str, gen: LoadGen, cpu: int, nice: int = 0) -> None:
        self.suite = suite
        self.verified: list[dict[str, Any]] = []
        self.engine = RtpEngine(cpu=cpu, nice=nice)
        self.pid = self.engine.pid
        self.source = gen.source_address
        self.receiver = gen.receiver_addresses[0]
        self.call: Call | None = None

    def before_trial(self, gen: LoadGen) -> None:
        if self.call is not None:
            self.engine.delete(self.call)
        self.call = self.engine.call(self.suite, self.source, self.receiver)
        gen.set_target(*self.call.relay_address)
        gen.set_key(self.suite, self.call.publisher_key, first_index=random.randrange(1000, 30000))

    @property
    def subscriber_keys(self) -> list[bytes]:
        assert self.call is not None
        return [self.call.subscriber_key]

    @property
    def subscriber_ssrcs(self) -> list[int] | None:
        return None  # rtpengine keeps the publisher's SSRC

    def after_trial(self, gen: LoadGen) -> None:
        pass

    fresh = True  # a new call per trial

    def rejected(self) -> int:
        return 0

    def restart(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.engine.close()


Relay = ProcessRelay | RtpEngineRelay


def relay_config(suite: str, gen: LoadGen, cpu: int, idle: int = 0) -> RelayConfig:
    """A publisher key and one key and SSRC per receiver of `gen`, new for each relay."""
    subscribers = [
        Subscriber(generate_key(suite), 0x50000000 + i, addr) for i, addr in enumerate(gen.receiver_addresses)
    ]
    return RelayConfig(suite, generate_key(suite), PUBLISHER_SSRC, subscribers, idle_endpoints=idle, cpu=cpu)


def start_relay(kind: str, suite: str, gen: LoadGen, cpu: int, *, nice: int = 0, idle: int = 0,
                timeout: float = 60.0, baseline: Baseline | None = None) -> Relay:
    """A relay of `kind` (charter, reference, python, rtpengine or charter@base) for one suite
    and the receivers of `gen`, pinned to `cpu`."""
    if kind == "rtpengine":
        return RtpEngineRelay(suite, gen, cpu, nice)
    if kind == BASELINE:
        if baseline is None:
            raise ValueError(f"{BASELINE} needs --baseline DIR")
        return ProcessRelay("charter", relay_config(suite, gen, cpu, idle), nice=nice, timeout=timeout,
                            name=BASELINE, root=baseline.root)
    return ProcessRelay(kind, relay_config(suite, gen, cpu, idle), nice=nice, timeout=timeout)
