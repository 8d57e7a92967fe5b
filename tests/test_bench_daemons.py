"""The daemons benchmark (bench/daemons.py) end to end, small: a controller and two media
daemons as real processes, every setup at one low rate for one short trial. Packets must be
forwarded through both daemons and across the cascade's relay link, and the first packets
each subscriber got must decrypt with its own key. No figure is judged: only that media
went where the setups say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bench._loadgen")

ROOT = Path(__file__).resolve().parent.parent
Results = dict[str, Any]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the benchmark pins its daemons to cores 0 and 1")
    out = tmp_path_factory.mktemp("daemons")
    run = subprocess.run(
        [sys.executable, "-m", "bench.daemons", "--at-rate", "2000", "--duration", "0.5", "--repeats", "1",
         "--conferences", "2", "--nice", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    written: Results = json.loads((out / "daemons.json").read_text())
    return written


def the_trial(results: Results, setup: str) -> Results:
    """The one trial of `setup` (one rate, one repeat)."""
    [search] = results["setups"][setup]["searches"]
    [trial] = search["trials"]
    assert isinstance(trial, dict)
    return trial


def test_every_setup_forwards_and_every_subscriber_decrypts(results: Results) -> None:
    for key, setup in results["setups"].items():
        assert the_trial(results, key)["delivered"] > 0, key
        assert setup["verified"]["failures"] == [], (key, setup["verified"])
        assert setup["verified"]["decrypted_ok"] > 0, key


def test_two_daemons_each_forward_their_conferences(results: Results) -> None:
    delivered = the_trial(results, "two")["delivered_by_daemon"]
    assert set(delivered) == {"mediad-a", "mediad-b"} and min(delivered.values()) > 0, delivered


def test_the_cascade_reaches_subscribers_on_the_far_daemon(results: Results) -> None:
    placement = results["placement"]["cascade"]
    assert placement["pub"] == "mediad-a"
    assert {d for p, d in placement.items() if p != "pub"} == {"mediad-a", "mediad-b"}, placement
    delivered = the_trial(results, "cascade")["delivered_by_daemon"]
    assert delivered.get("mediad-b", 0) > 0, delivered
    assert results["exit_codes"] == {"controller": 0, "mediad-a": 0, "mediad-b": 0}
