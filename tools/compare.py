"""`geoml compare`: several systems on one workload and target, in the paper's table form."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoml.bus import GeomlError, Topology, load_topology

from .results import plot_curves, time_to_target, write_results
from .systems import RunConfig, names, problems, run_system

#: Share of LAN's improvement (initial -> final objective) that defines the default target.
DEFAULT_TARGET_SHARE = 0.98
#: With the target taken from LAN, the other systems may run this many times LAN's clocks.
CLOCK_SLACK = 2

COLUMNS = ("time_to_target_s", "speedup_vs_baseline", "ratio_vs_lan", "wan_bytes",
           "filtered_fraction", "cost_usd", "final_objective", "final_accuracy")


#: LAN's curve is not a yardstick when its rises add up to more than this share of its
#: net fall (start to end): it oscillates more than it converges.
MAX_RISE_SHARE = 0.5


class UntrustedYardstick(GeomlError):
    """LAN's run cannot set a target: it got worse, diverged, or never settled."""


def yardstick_problem(lan_curve: Sequence[Mapping[str, Any]]) -> str | None:
    """Why LAN's curve cannot set the target (None: it can). A target is a share of LAN's
    improvement, so LAN must improve, stay finite, and fall more than it rises."""
    objectives = [float(row["objective"]) for row in lan_curve]
    first, last = objectives[0], objectives[-1]
    fix = ("give --until objective:X, a smaller lr (--opt lr=...), or --aggregation mean")
    if not all(math.isfinite(o) for o in objectives):
        return f"LAN's objective diverged (not finite by clock {len(objectives) - 1}); {fix}"
    if last >= first:
        return (f"LAN's objective went from {first:.4g} to {last:.4g} in "
                f"{lan_curve[-1]['clock']} clocks: it did not improve, so no share of its "
                f"improvement is a target; {fix}")
    rises = sum(max(0.0, b - a) for a, b in itertools.pairwise(objectives))
    if rises > MAX_RISE_SHARE * (first - last):
        return (f"LAN's objective never settled: it rose by {rises:.4g} in all while falling "
                f"{first - last:.4g} from start to end ({first:.4g} -> {last:.4g}), so a "
                f"target from it would be luck; {fix}")
    return None


def default_target(lan_curve: Sequence[Mapping[str, Any]]) -> float:
    """The objective after DEFAULT_TARGET_SHARE of LAN's improvement over its run
    (UntrustedYardstick if that curve cannot set one)."""
    problem = yardstick_problem(lan_curve)
    if problem is not None:
        raise UntrustedYardstick(f"compare: {problem}")
    first, last = lan_curve[0]["objective"], lan_curve[-1]["objective"]
    return float(last + (1 - DEFAULT_TARGET_SHARE) * (first - last))


def target_source(target: float, objective: str, lan_curve: Sequence[Mapping[str, Any]] | None
                  ) -> str:
    """One line: the target and where it came from."""
    if lan_curve is None:
        return f"target: {objective} {target:.4f} (given with --until)"
    first, last = lan_curve[0]["objective"], lan_curve[-1]["objective"]
    return (f"target: {objective} {target:.4f} = {DEFAULT_TARGET_SHARE:.0%} of LAN's "
            f"improvement ({first:.4f} -> {last:.4f} in {lan_curve[-1]['clock']} clocks)")


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def compare_rows(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: the compare.json fields, with ratios to baseline and LAN."""
    base = summaries.get("baseline", {}).get("time_to_target_s")
    lan = summaries.get("lan", {}).get("time_to_target_s")
    rows: dict[str, dict[str, Any]] = {}
    for system, s in summaries.items():
        if "refused" in s:
            rows[system] = {"refused": s["refused"]}
            continue
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


def format_table(rows: Mapping[str, Mapping[str, Any]], objective: str,
                 target_line: str = "") -> str:
    """A fixed-width table: one line per system, then the line saying which target."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
            else format(v, fmt)

    accuracy = any(r.get("final_accuracy") is not None for r in rows.values())
    head = (f"{'system':<11} {'time to target':>14} {'vs baseline':>11} {'x LAN':>6} "
            f"{'WAN GB':>8} {'filtered':>8} {'cost $':>8} {'final ' + objective:>18}"
            + (f" {'accuracy':>8}" if accuracy else ""))
    lines = [head, "-" * len(head)]
    for system, r in rows.items():
        if "refused" in r:
            lines.append(f"{system:<11} refused: {r['refused']}")
            continue
        t = r["time_to_target_s"]
        speedup = r["speedup_vs_baseline"]
        lines.append(
            f"{system:<11} {num(t, '.2f') + ' s' if t is not None else 'not reached':>14} "
            f"{num(speedup, '.2f') + 'x' if speedup is not None else '-':>11} "
            f"{num(r['ratio_vs_lan'], '.2f'):>6} {r['wan_bytes'] / 1e9:>8.4f} "
            f"{num(r['filtered_fraction'], '.3f'):>8} {r['cost_usd']:>8.4f} "
            f"{r['final_objective']:>18.4f}"
            + (f" {num(r.get('final_accuracy'), '.4f'):>8}" if accuracy else ""))
    if target_line:
        lines.append(target_line)
    return "\n".join(lines)


async def compare(base: RunConfig, systems: Sequence[str], out: Path) -> dict[str, Any]:
    """Run `systems` one after another with the same workload, bounds and target.

    Every system is first checked against the topology (the registry's `check`); one that
    cannot run there is marked refused, with the reason, and the others run. Without a
    target, LAN runs first (it must be among the systems and runnable) and sets it
    (`default_target`, which refuses a LAN curve that got worse or never settled); every
    other run then stops at that target, or after CLOCK_SLACK times the clocks
    (`iterations`) and the seconds LAN was given.
    Writes out/<system>/ (each run's results), compare.json and compare.png.
    """
    if not systems:
        raise ValueError("--systems: name at least one system")
    if len(set(systems)) != len(systems):
        raise ValueError(f"--systems lists a system twice: {','.join(systems)}")
    unknown = [s for s in systems if s not in names()]
    if unknown:
        raise ValueError(f"unknown system {unknown[0]!r}; choose from {', '.join(names())}")
    topo = base.topology if isinstance(base.topology, Topology) else load_topology(base.topology)
    base = dataclasses.replace(base, topology=topo)
    refused = problems(topo, base, list(systems))
    target = base.target
    order = [s for s in systems if s not in refused]
    if target is None:
        if "lan" not in systems:
            raise ValueError("without --until, the target comes from the LAN run: add lan "
                             "to --systems or give --until objective:X")
        if "lan" in refused:
            raise ValueError(f"without --until, the target comes from the LAN run, and lan "
                             f"cannot run on {topo.name!r}: {refused['lan']}")
        order = ["lan"] + [s for s in order if s != "lan"]
    if not order:
        raise ValueError("no system of --systems can run on topology "
                         f"{topo.name!r}: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    if not base.quiet:
        for system, why in refused.items():
            print(f"== {system}: refused, not run: {why}", file=sys.stderr, flush=True)
    summaries: dict[str, dict[str, Any]] = {s: {"refused": why} for s, why in refused.items()}
    curves: dict[str, list[dict[str, Any]]] = {}
    lan_curve = None
    for system in order:
        setting_target = target is None
        # The run that sets the target writes its results once the target is known.
        cfg = dataclasses.replace(base, system=system, target=target,
                                  out=None if setting_target else out / system)
        if lan_curve is not None and cfg.iterations is not None:
            cfg.iterations *= CLOCK_SLACK
        cfg.check()
        if not cfg.quiet:
            print(f"== {system} ==", file=sys.stderr, flush=True)
        result = await run_system(cfg)
        if setting_target:
            try:
                target = default_target(result.curve)
            except UntrustedYardstick:
                write_results(out / system, result.summary, result.curve,
                              f"{system} on {result.summary['topology']}")  # for a look
                raise
            lan_curve = result.curve
            result.summary["target"] = target
            result.summary["time_to_target_s"] = time_to_target(result.curve, target)
            write_results(out / system, result.summary, result.curve,
                          f"{system} on {result.summary['topology']}")
            if not cfg.quiet:
                print(target_source(target, result.summary["objective_name"], lan_curve),
                      file=sys.stderr, flush=True)
        summaries[system] = result.summary
        curves[system] = result.curve
    ordered = {s: summaries[s] for s in systems}
    rows = compare_rows(ordered)
    ran = next(summaries[s] for s in order)
    objective = ran["objective_name"]
    assert target is not None
    source = target_source(target, objective, lan_curve)
    report = {"topology": ran["topology"], "workload": ran["workload"],
              "objective_name": objective, "target": target, "target_source": source,
              "refused": refused, "systems": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curves({s: curves[s] for s in systems if s in curves}, out / "compare.png",
                objective, target=target)
    report["table"] = format_table(rows, objective, source)
    return report
