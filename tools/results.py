"""Run results: the cost model (wan.md) and summary.json / curve.csv / curve.png."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoml.bus import Topology


def cost_usd(topology: Topology, machines: Mapping[str, int], seconds: float,
             wan_link_bytes: Mapping[str, int]) -> dict[str, float]:
    """Machine-hours of every machine for the run + egress GB x the sending region's price.

    `wan_link_bytes` maps WAN link names ("A->B") to the bytes they carried."""
    machine = sum(n * topology.region(r).machine_usd_per_hour * seconds / 3600
                  for r, n in machines.items())
    egress = 0.0
    for name, nbytes in wan_link_bytes.items():
        sender = name.split("->")[0]
        egress += nbytes / 1e9 * topology.region(sender).egress_usd_per_gb
    return {"cost_usd": machine + egress, "machine_usd": machine, "egress_usd": egress}


def time_to_target(curve: Sequence[Mapping[str, Any]], target: float | None) -> float | None:
    """First time the objective is at or below `target` (None if never)."""
    if target is None:
        return None
    for row in curve:
        if row["objective"] <= target:
            return float(row["time_s"])
    return None


def write_results(out: Path, summary: Mapping[str, Any], curve: Sequence[Mapping[str, Any]],
                  title: str) -> None:
    """summary.json, curve.csv and curve.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default)
                                      + "\n")
    fields = ["time_s", "clock", "objective"]
    extra = sorted({k for row in curve for k in row} - set(fields))
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + extra)
        writer.writeheader()
        for row in curve:
            writer.writerow(row)
    plot_curves({title: curve}, out / "curve.png", summary.get("objective_name", "objective"),
                target=summary.get("target"))


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path,
                ylabel: str, target: float | None = None) -> None:
    """Objective against time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, curve in curves.items():
        ax.plot([r["time_s"] for r in curve], [r["objective"] for r in curve], marker=".",
                label=label)
    if target is not None and math.isfinite(target):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("time (s, emulated WAN included)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def json_default(value: Any) -> Any:
    """json.dumps' `default` for numpy values: arrays as lists, scalars as Python numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")
