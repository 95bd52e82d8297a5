"""`geoml compare`: several systems on one workload and target, in the paper's table form."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import plot_curves, time_to_target, write_results
from .systems import RunConfig, names, run_system

#: Share of LAN's improvement (initial -> final objective) that defines the default target.
DEFAULT_TARGET_SHARE = 0.98
#: With the target taken from LAN, the other systems may run this many times LAN's clocks.
CLOCK_SLACK = 2

COLUMNS = ("time_to_target_s", "speedup_vs_baseline", "ratio_vs_lan", "wan_bytes",
           "filtered_fraction", "cost_usd", "final_objective", "final_accuracy")


def default_target(lan_curve: Sequence[Mapping[str, Any]]) -> float:
    """The objective after DEFAULT_TARGET_SHARE of LAN's improvement over its run."""
    first, last = lan_curve[0]["objective"], lan_curve[-1]["objective"]
    return float(last + (1 - DEFAULT_TARGET_SHARE) * (first - last))


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def compare_rows(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: the compare.json fields, with ratios to baseline and LAN."""
    base = summaries.get("baseline", {}).get("time_to_target_s")
    lan = summaries.get("lan", {}).get("time_to_target_s")
    rows = {}
    for system, s in summaries.items():
        t = s["time_to_target_s"]
        rows[system] = {
            "time_to_target_s": t,
            "speedup_vs_baseline": _ratio(base, t),
            "ratio_vs_lan": _ratio(t, lan),
            "wan_bytes": s["wan_bytes"],
            "filtered_fraction": s.get("filtered_fraction"),
            "cost_usd": s["cost_usd"],
            "final_objective": s["final_objective"],
            "final_accuracy": s.get("final_metrics", {}).get("accuracy"),
            "iterations": s["iterations"],
            "elapsed_s": s["elapsed_s"],
        }
    return rows


def format_table(rows: Mapping[str, Mapping[str, Any]], objective: str) -> str:
    """A fixed-width table: one line per system."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
            else format(v, fmt)

    accuracy = any(r.get("final_accuracy") is not None for r in rows.values())
    head = (f"{'system':<11} {'time to target':>14} {'vs baseline':>11} {'x LAN':>6} "
            f"{'WAN GB':>8} {'filtered':>8} {'cost $':>8} {'final ' + objective:>18}"
            + (f" {'accuracy':>8}" if accuracy else ""))
    lines = [head, "-" * len(head)]
    for system, r in rows.items():
        t = r["time_to_target_s"]
        speedup = r["speedup_vs_baseline"]
        lines.append(
            f"{system:<11} {num(t, '.2f') + ' s' if t is not None else 'not reached':>14} "
            f"{num(speedup, '.2f') + 'x' if speedup is not None else '-':>11} "
            f"{num(r['ratio_vs_lan'], '.2f'):>6} {r['wan_bytes'] / 1e9:>8.4f} "
            f"{num(r['filtered_fraction'], '.3f'):>8} {r['cost_usd']:>8.4f} "
            f"{r['final_objective']:>18.4f}"
            + (f" {num(r.get('final_accuracy'), '.4f'):>8}" if accuracy else ""))
    return "\n".join(lines)


async def compare(base: RunConfig, systems: Sequence[str], out: Path) -> dict[str, Any]:
    """Run `systems` one after another with the same workload, bounds and target.

    Without a target, LAN runs first (it must be among the systems) and sets it
    (`default_target`); every other run then stops at that target, or after CLOCK_SLACK
    times the clocks (`iterations`) and the seconds LAN was given.
    Writes out/<system>/ (each run's results), compare.json and compare.png.
    """
    if not systems:
        raise ValueError("--systems: name at least one system")
    if len(set(systems)) != len(systems):
        raise ValueError(f"--systems lists a system twice: {','.join(systems)}")
    unknown = [s for s in systems if s not in names()]
    if unknown:
        raise ValueError(f"unknown system {unknown[0]!r}; choose from {', '.join(names())}")
    target = base.target
    order = list(systems)
    if target is None:
        if "lan" not in systems:
            raise ValueError("without --until, the target comes from the LAN run: add lan "
                             "to --systems or give --until objective:X")
        order = ["lan"] + [s for s in systems if s != "lan"]
    summaries: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    derived = target is None
    for system in order:
        setting_target = target is None
        # The run that sets the target writes its results once the target is known.
        cfg = dataclasses.replace(base, system=system, target=target,
                                  out=None if setting_target else out / system)
        if derived and system != "lan" and cfg.iterations is not None:
            cfg.iterations *= CLOCK_SLACK
        cfg.check()
        if not cfg.quiet:
            print(f"== {system} ==", file=sys.stderr, flush=True)
        result = await run_system(cfg)
        if setting_target:
            target = default_target(result.curve)
            result.summary["target"] = target
            result.summary["time_to_target_s"] = time_to_target(result.curve, target)
            write_results(out / system, result.summary, result.curve,
                          f"{system} on {result.summary['topology']}")
            if not cfg.quiet:
                print(f"target {result.summary['objective_name']} {target:.4f} "
                      f"({DEFAULT_TARGET_SHARE:.0%} of LAN's improvement)", file=sys.stderr,
                      flush=True)
        summaries[system] = result.summary
        curves[system] = result.curve
    ordered = {s: summaries[s] for s in systems}
    rows = compare_rows(ordered)
    any_summary = next(iter(ordered.values()))
    objective = any_summary["objective_name"]
    report = {"topology": any_summary["topology"], "workload": any_summary["workload"],
              "objective_name": objective, "target": target, "systems": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curves({s: curves[s] for s in systems}, out / "compare.png", objective,
                target=target)
    report["table"] = format_table(rows, objective)
    return report
