"""The machine as the forwarding benchmark reads it: CPU time of a process and busy time of a
core from /proc, the core's ksoftirqd, and waiting until other work leaves the cores alone."""
from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of one core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return (sum(v[:8]) - idle) / CLK_TCK, sum(v[:8]) / CLK_TCK
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def ksoftirqd_pid(cpu: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == f"ksoftirqd/{cpu}":
                        return int(entry)
            except OSError:
                continue
    return None


def wait_for_quiet(cpus: tuple[int, ...], *, limit: float = 0.35, patience: float = 20.0,
                   verbose: bool = True) -> float:
    """Wait (up to `patience` s) until the cores are mostly idle; returns their busy share."""
    deadline = time.monotonic() + patience
    while True:
        before = [core_busy_seconds(c) for c in cpus]
        time.sleep(0.4)
        after = [core_busy_seconds(c) for c in cpus]
        busy = max((a[0] - b[0]) / max(1e-9, a[1] - b[1]) for a, b in zip(after, before, strict=False))
        if busy <= limit or time.monotonic() > deadline:
            return busy
        if verbose:
            print(f"    (other work keeps the cores {busy:.0%} busy: waiting)", flush=True)
