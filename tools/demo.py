"""`geoml demo`: LAN, baseline and Gaia on ss_wan (all-in-one, virtual time): a dense
classifier at the paper's compute-to-WAN balance, then MF on MovieLens, the hard case.

`geoml demo --bus` is the message-bus demo instead: every region pushes tensors to every
other region at once for a few seconds; the table compares each link's achieved rate
with its configured rate.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from geoml.bus import Network, load_topology
from geoml.roles.compute import ComputeCost
from geoml.roles.traffic import SinkReport, run_sink, run_source

#: LAN's clocks in each of the demo's two comparisons (the others up to twice as many).
DEMO_CLOCKS = 20
#: The paper's balance: a clock is this many (virtual) seconds of work, three times the
#: 164 ms one-way latency of ss_wan (in the paper a clock is seconds of work).
CLOCK_S = 0.5
#: A dense classifier with a 1 MB model (2000 features x 125 classes): big enough that
#: moving it every clock costs the WAN, cheap enough to compute on 2 cores.
BALANCED = {"samples": 8000, "features": 2000, "classes": 125, "batch": 64,
            "clock_fraction": 0.25}


async def gaia_demo(topology: str, out: Path) -> dict[str, Any]:
    """LAN, baseline and gaia on `topology` twice, in virtual time: a dense classifier at
    the paper's compute-to-WAN balance, then MF on MovieLens, the hard case."""
    from geoml.workloads import make_workload

    from .compare import compare
    from .systems import RunConfig

    topo = load_topology(topology)
    classifier = make_workload("softmax-synthetic", BALANCED)
    cost = ComputeCost.per_clock(classifier, {r.name: r.workers for r in topo.regions
                                              if r.workers}, CLOCK_S,
                                 BALANCED["clock_fraction"])
    print(f"geoml demo 1/2: a 1 MB softmax classifier, LAN vs baseline vs Gaia on "
          f"{topology}; a clock is {CLOCK_S} s of work (the paper's balance: long next to "
          f"the WAN's latency); LAN runs {DEMO_CLOCKS} clocks and sets the target",
          flush=True)
    balanced = await compare(RunConfig(topology=topo, system="lan", workload=classifier,
                                       iterations=DEMO_CLOCKS, compute=cost),
                             ["lan", "baseline", "gaia"], out / "balanced")
    print(balanced["table"], flush=True)
    print(f"\ngeoml demo 2/2: MF on MovieLens, the same systems on {topology}; LAN runs "
          f"{DEMO_CLOCKS} clocks", flush=True)
    mf = await compare(RunConfig(topology=topo, system="lan", workload="mf-movielens",
                                 iterations=DEMO_CLOCKS), ["lan", "baseline", "gaia"],
                       out / "mf")
    print(mf["table"])
    lan_clock = mf["systems"]["lan"]["elapsed_s"] / max(1, mf["systems"]["lan"]["iterations"])
    latency = max(spec.latency_s for spec in topo.iter_links())
    print(f"why MF differs: its clock is {lan_clock * 1e3:.0f} ms of work next to a "
          f"{latency * 1e3:.0f} ms one-way WAN, so every system that waits on the WAN "
          f"each clock (baseline; gaia's mirror clock) is many times LAN")
    print(f"wrote {out}/balanced and {out}/mf: compare.json, compare.png and one directory "
          "per system")
    return {"balanced": balanced, "mf": mf}


async def bus_demo(topology: str, seconds: float, frame_bytes: int,
                   out: Path | None) -> dict[str, Any]:
    """Saturate every WAN link of `topology` for `seconds`; return per-link results."""
    topo = load_topology(topology)
    regions = topo.region_names
    async with Network(topo) as net:
        loop = asyncio.get_running_loop()
        sinks = {r: await net.connect(f"{r}/sink/0") for r in regions}
        reports = {r: SinkReport() for r in regions}
        sink_tasks = [asyncio.ensure_future(
            run_sink(sinks[r], sources=len(regions) - 1, idle_timeout=seconds + 60,
                     report=reports[r])) for r in regions]
        sources = []
        for i, a in enumerate(regions):
            for b in regions:
                if a != b:
                    ep = await net.connect(f"{a}/source/{i * len(regions) + regions.index(b)}")
                    sources.append(asyncio.ensure_future(
                        run_source(ep, f"{b}/sink/0", frame_bytes=frame_bytes,
                                   seconds=seconds)))
        t0 = loop.time()
        while not all(t.done() for t in sources):
            await asyncio.wait(sources, timeout=1.0)
            print(f"  t={loop.time() - t0:4.1f}s  WAN bytes so far: "
                  f"{net.wan_bytes() / 1e6:8.2f} MB", flush=True)
        await asyncio.wait_for(asyncio.gather(*sink_tasks), 120)
        rows = []
        for spec in topo.iter_links():
            a, b = spec.name.split("->")
            link = net.routers[a].wan_link(b)
            achieved = link.stats.achieved_bps()
            rows.append({
                "link": spec.name,
                "configured_mbps": spec.rate_bps / 1e6,
                "achieved_mbps": achieved / 1e6,
                "error_pct": abs(achieved - spec.rate_bps) / spec.rate_bps * 100,
                # the bucket's pacing without the capacity a late event loop lost
                "paced_mbps": link.stats.paced_bps() / 1e6,
                "late_ms": link.stats.late_s * 1e3,
                "latency_ms_configured": spec.latency_s * 1e3,
                "latency_ms_median": reports[b].as_dict()["latency_ms_median"],
                "bytes": link.stats.bytes,
                "frames": link.stats.frames,
                "queue_delay_mean_ms": link.stats.as_dict()["queue_delay_mean_ms"],
            })
        result = {"topology": topo.name, "seconds": seconds, "frame_bytes": frame_bytes,
                  "links": rows, "wan_bytes": net.wan_bytes()}
    print()
    print(f"{'link':<28} {'configured':>11} {'achieved':>10} {'error':>7} {'latency':>9} "
          f"{'median delay':>13}")
    for r in rows:
        med = r["latency_ms_median"]
        print(f"{r['link']:<28} {r['configured_mbps']:>7.1f} Mb/s {r['achieved_mbps']:>6.2f} "
              f"Mb/s {r['error_pct']:>5.2f}% {r['latency_ms_configured']:>6.0f} ms "
              f"{med if med is None else round(med):>10} ms")
    print("(median delay: send to receipt, including queueing behind the saturating stream)")
    late = [r for r in rows if r["late_ms"] > 0]
    if late:
        print("(a loaded machine woke the links late: " + ", ".join(
            f"{r['link']} lost {r['late_ms']:.0f} ms of capacity, paced at "
            f"{r['paced_mbps']:.2f} Mb/s without it" for r in late) + ")")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bus_demo.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out / 'bus_demo.json'}")
    return result
