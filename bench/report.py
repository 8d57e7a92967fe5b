"""The forwarding benchmark's report: Charter's ratios against the other relays and their
targets, the printed tables, the Markdown table of bench/README.md and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.relays import BASELINE
from bench.settings import (
    RTP_SIZE,
    SHORT_SUITE,
    TARGET_P99_MS,
    TARGET_SCALE,
    TARGET_VS_REFERENCE,
    TARGET_VS_RTPENGINE,
)


def throughput_ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """a's highest input rate over b's at one suite and fan-out, None where one is missing."""
    if not a or not b or not b["max_in_pps"]:
        return None
    return {
        "suite": a["suite"],
        "fanout": a["fanout"],
        "ratio": a["max_in_pps"] / b["max_in_pps"],
        "load_limited": a["at_load_ceiling"] and b["at_load_ceiling"],
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    by = {(r["relay"], r["suite"], r["fanout"], r["burst"]): r for r in results["relays"]}
    burst = results["params"]["burst"]
    out: dict[str, Any] = {
        "charter_vs_reference": [],
        "charter_vs_python": [],
        "charter_vs_rtpengine": [],
        "p99_added_latency_ms": [],
    }
    # With a baseline checkout (--baseline): its Charter relay against the reference relay and
    # this checkout's Charter against it.
    pairs = [("charter", "reference", "charter_vs_reference"), ("charter", "python", "charter_vs_python")]
    if any(r["relay"] == "webrtc" for r in results["relays"]):
        out["webrtc_vs_charter"] = []
        pairs.append(("webrtc", "charter", "webrtc_vs_charter"))
    if any(r["relay"] == BASELINE for r in results["relays"]):
        out["baseline_vs_reference"], out["charter_vs_baseline"] = [], []
        pairs += [(BASELINE, "reference", "baseline_vs_reference"), ("charter", BASELINE, "charter_vs_baseline")]
    for suite in results["params"]["suites"]:
        for fanout in results["params"]["fanouts"]:
            for one, other, key in pairs:
                ratio = throughput_ratio(by.get((one, suite, fanout, burst)), by.get((other, suite, fanout, burst)))
                if ratio:
                    out[key].append(ratio)
            c = by.get(("charter", suite, fanout, burst))
            if c and c["latency"]["added_p99_us"] is not None:
                out["p99_added_latency_ms"].append(
                    {"suite": suite, "fanout": fanout, "ms": c["latency"]["added_p99_us"] / 1000}
                )
        e = by.get(("rtpengine", suite, 1, 1))
        if e and e["max_in_pps"]:
            for b in (1, burst):
                c = by.get(("charter", suite, 1, b))
                if c:
                    out["charter_vs_rtpengine"].append(
                        {"suite": suite, "charter_burst": b, "ratio": c["max_in_pps"] / e["max_in_pps"]}
                    )
    if results.get("scale"):
        out["scale_cost_ratio"] = results["scale"]["cost_ratio"]
        out["scale_max_ratio"] = results["scale"]["max_ratio"]
    return out


def ratio_cells(x: dict[str, Any]) -> str:
    return f"{SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ratio']:5.2f}"


def reference_mark(x: dict[str, Any]) -> str:
    mark = "ok" if x["ratio"] >= TARGET_VS_REFERENCE else "BELOW"
    if x.get("load_limited"):
        mark += " (both at the load ceiling)"
    return mark


def print_report(results: dict[str, Any]) -> None:
    print("\nHighest rate with < 0.5 % loss (packets/s), added latency at half that rate, relay CPU")
    width = max([10] + [len(r["relay"]) for r in results["relays"]])
    header = f"{'relay':<{width}} {'suite':<7} {'fan':>4} {'burst':>5} {'in pps':>9} {'out pps':>9} {'CPU@max':>8} {'us/pkt':>7} {'p50 add':>8} {'p99 add':>8}"
    print(header)
    print("-" * len(header))
    for r in results["relays"]:
        lat = r["latency"]
        cpu = r["relay_cpu_pct_at_max"]
        upp = r["relay_us_per_packet_in_at_max"]
        ge = ">=" if r["at_load_ceiling"] else ""
        print(
            f"{r['relay']:<{width}} {SHORT_SUITE[r['suite']]:<7} {'1:' + str(r['fanout']):>4} {r['burst']:>5} "
            f"{ge + format(r['max_in_pps'], ',.0f'):>9} {ge + format(r['max_out_pps'], ',.0f'):>9} "
            f"{f'{cpu:7.0f}%' if cpu is not None else '      -':>8} {f'{upp:7.2f}' if upp else '      -':>7} "
            f"{'{:6.0f}us'.format(lat['added_p50_us']) if lat['added_p50_us'] is not None else '-':>8} "
            f"{'{:6.0f}us'.format(lat['added_p99_us']) if lat['added_p99_us'] is not None else '-':>8}"
        )
    d = results["direct"]
    print(">= : passed at the highest rate the load process offers (the relay's limit is higher)")
    for e in results["errors"]:
        print(f"ERROR {e}")
    print(
        "direct path (no relay): "
        + ", ".join(f"bursts of {x['burst']}: p50 {x['p50_us']:.1f} us, p99 {x['p99_us']:.1f} us" for x in d)
    )
    rt = results["ratios"]
    print("\nRatios (target)")
    base = results.get("baseline", {})
    rev = base.get("rev", "?")
    for key, label, note in (
        ("charter_vs_reference", "Charter / reference relay", ""),
        ("baseline_vs_reference", f"{BASELINE} / reference", f"   [{BASELINE} = {rev}]"),
    ):
        for x in rt.get(key, []):
            print(f"  {label:<27}{ratio_cells(x)}  (>= {TARGET_VS_REFERENCE})  {reference_mark(x)}{note}")
    for x in rt.get("charter_vs_baseline", []):
        note = " (both at the load ceiling)" if x.get("load_limited") else ""
        print(
            f"  {'Charter / ' + BASELINE:<27}{ratio_cells(x)}  ({base.get('charter_rev', 'this checkout')} "
            f"against {rev}){note}"
        )
    for x in rt.get("webrtc_vs_charter", []):
        print(f"  {'WebRTC routes / Charter':<27}{ratio_cells(x)}  (endpoints keyed after a handshake, "
              "receiver's payload type, no extensions)")
    for x in rt["charter_vs_rtpengine"]:
        mark = "ok" if x["ratio"] >= TARGET_VS_RTPENGINE else "BELOW"
        print(
            f"  Charter / rtpengine        {SHORT_SUITE[x['suite']]:<7} 1:1  {x['ratio']:5.2f}  (>= {TARGET_VS_RTPENGINE}, Charter with bursts of {x['charter_burst']})  {mark}"
        )
    for x in rt["charter_vs_python"]:
        print(f"  Charter / Python forwarder {SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ratio']:5.2f}")
    for x in rt["p99_added_latency_ms"]:
        mark = "ok" if x["ms"] <= TARGET_P99_MS else "ABOVE"
        print(
            f"  Charter p99 added latency  {SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ms']:5.3f} ms  (<= {TARGET_P99_MS} ms)  {mark}"
        )
    if "scale_cost_ratio" in rt and rt["scale_cost_ratio"] is not None:
        s = results["scale"]
        mark = "ok" if rt["scale_cost_ratio"] >= TARGET_SCALE else "BELOW"
        print(
            f"  per-packet cost, {1 + s['fanout']} endpoints / {s['endpoints']:,} endpoints: {rt['scale_cost_ratio']:5.2f}  "
            f"(>= {TARGET_SCALE})  {mark}   [{s['us_per_packet_active_only']:.2f} vs {s['us_per_packet_with_idle']:.2f} us/packet; "
            f"max rate ratio {format(rt['scale_max_ratio'], '.2f') if rt['scale_max_ratio'] else 'not measured'}]"
        )


def markdown_table(results: dict[str, Any]) -> str:
    """The table of bench/README.md."""
    lines = [
        "| relay | suite | fan-out | load | max in pps | max out pps | relay CPU at max | CPU us / packet in | added p50 / p99 at half rate |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["relays"]:
        ge = "≥ " if r["at_load_ceiling"] else ""
        lat = r["latency"]
        cpu = r["relay_cpu_pct_at_max"]
        upp = r["relay_us_per_packet_in_at_max"]
        lines.append(
            f"| {r['relay']} | {SHORT_SUITE[r['suite']]} | 1:{r['fanout']} | bursts of {r['burst']} "
            f"| {ge}{r['max_in_pps']:,.0f} | {ge}{r['max_out_pps']:,.0f} "
            f"| {f'{cpu:.0f} %' if cpu is not None else '-'} | {f'{upp:.2f}' if upp else '-'} "
            f"| {lat['added_p50_us']:.0f} / {lat['added_p99_us']:.0f} us |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = results["params"]
    burst = params["burst"]
    kinds = [k for k in ("charter", BASELINE, "reference", "python") if any(r["relay"] == k for r in results["relays"])]
    colors = {
        "charter": "#1f77b4",
        BASELINE: "#9ecae1",
        "reference": "#7f7f7f",
        "python": "#ff7f0e",
        "rtpengine": "#2ca02c",
    }
    rev = results.get("baseline", {}).get("rev", "?")
    names = {BASELINE: f"{BASELINE} ({rev})"}
    groups = [(s, f) for s in params["suites"] for f in params["fanouts"]]
    by = {(r["relay"], r["suite"], r["fanout"], r["burst"]): r for r in results["relays"]}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    ax = axes[0]
    series = kinds + (["rtpengine"] if any(r["relay"] == "rtpengine" for r in results["relays"]) else [])
    width = 0.8 / max(1, len(series))
    for k, kind in enumerate(series):
        for g, (suite, fanout) in enumerate(groups):
            r = by.get((kind, suite, fanout, 1 if kind == "rtpengine" else burst))
            if not r:
                continue
            x = g + (k - (len(series) - 1) / 2) * width
            ax.bar(
                [x],
                [r["max_out_pps"]],
                width,
                color=colors[kind],
                hatch="//" if r["at_load_ceiling"] else None,
                label=(f"{kind} (bursts of 1)" if kind == "rtpengine" else names.get(kind, kind)) if g == 0 else None,
            )
            if kind == "rtpengine":
                ax.text(x, r["max_out_pps"], f"{r['max_out_pps'] / 1000:.0f}k", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{SHORT_SUITE[s]}\n1:{f}" for s, f in groups])
    ax.set_title("Highest forwarded packets/s out (< 0.5 % loss)\nhatched: the load process's limit, not the relay's")
    ax.set_ylabel("packets/s")
    ax.legend(fontsize=8)
    width = 0.8 / max(1, len(kinds))
    ax = axes[1]
    for k, kind in enumerate(kinds):
        for g, (suite, fanout) in enumerate(groups):
            r = by.get((kind, suite, fanout, burst))
            if r and r["latency"]["added_p99_us"] is not None:
                x = g + (k - (len(kinds) - 1) / 2) * width
                ax.bar(
                    [x],
                    [r["latency"]["added_p99_us"] / 1000],
                    width,
                    color=colors[kind],
                    alpha=0.45,
                    label=f"{names.get(kind, kind)} p99" if g == 0 else None,
                )
                ax.bar(
                    [x],
                    [max(0.0, r["latency"]["added_p50_us"]) / 1000],
                    width,
                    color=colors[kind],
                    label=f"{names.get(kind, kind)} p50" if g == 0 else None,
                )
    ax.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="p99 target")
    ax.set_xticks(range(len(groups)), [f"{SHORT_SUITE[s]}\n1:{f}" for s, f in groups])
    ax.set_title("Added latency at half the highest rate (p50 solid, p99 light)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    rt = results["ratios"]
    labels: list[str] = []
    values: list[float] = []
    targets: list[float | None] = []  # None: a ratio without a target (this build / the baseline)
    for key, label, target in (
        ("charter_vs_reference", "/ reference", TARGET_VS_REFERENCE),
        ("baseline_vs_reference", f"{rev} / reference", TARGET_VS_REFERENCE),
        ("charter_vs_baseline", f"/ {rev}", None),
    ):
        for x in rt.get(key, []):
            labels.append(f"{label} {SHORT_SUITE[x['suite']]} 1:{x['fanout']}")
            values.append(x["ratio"])
            targets.append(target)
    for x in rt["charter_vs_rtpengine"]:
        if x["charter_burst"] == 1:
            labels.append(f"/ rtpengine {SHORT_SUITE[x['suite']]} 1:1")
            values.append(x["ratio"])
            targets.append(TARGET_VS_RTPENGINE)
    if rt.get("scale_cost_ratio"):
        labels.append(f"cost, {1 + results['scale']['fanout']} / {results['scale']['endpoints']:,} endpoints")
        values.append(rt["scale_cost_ratio"])
        targets.append(TARGET_SCALE)
    bars = ax.bar(
        range(len(values)),
        values,
        color=[
            "#7f7f7f" if t is None else "#2ca02c" if v >= t else "#d62728" for v, t in zip(values, targets, strict=True)
        ],
    )
    ax.scatter(
        [i for i, t in enumerate(targets) if t is not None],
        [t for t in targets if t is not None],
        marker="_",
        s=500,
        color="black",
        zorder=5,
        label="target",
    )
    for b, v in zip(bars, values, strict=False):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    ax.set_title("Charter's ratios against their targets")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Charter forwarding benchmark: {RTP_SIZE}-byte RTP, SRTP re-keyed per subscriber, "
        f"relay on one core, bursts of {burst}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
