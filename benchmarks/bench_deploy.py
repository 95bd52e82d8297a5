"""Per-process benchmark (issue [deploy]).

1. launch_vs_allinone_time_ratio: the same short gaia run on vc_wan (MF on MovieLens,
   10 clocks) as processes (`geoml launch`, CurveZMQ on) and all-in-one (`geoml run`, real
   time): training time of the first over that of the second. Wall times, start-up
   included, WAN bytes and objectives are reported next to it.
2. curve_overhead_pct: 64 MB in 1 MB frames from a role in one region to a role in the
   other over tcp on 127.0.0.1 (two routers, links at 1 Tb/s: as fast as the machine
   goes), with and without CurveZMQ, in the same run; the throughput lost to CURVE, in
   percent. The same with the regions' LANs at 1 Gb/s (the topologies' default) is
   reported next to it.

3. overload_peak_rss_mb: three sources in east, each sending 256 KiB frames (a fresh buffer
   each) as fast as it can for 60 s, to one sink in west over a 200 Mbit/s WAN link; routers,
   sources and sink are processes over tcp with CurveZMQ. The senders could push about ten
   times the link's rate. Done twice in the same run: with reliable endpoints (what `geoml
   launch` uses whenever restarts are on: each source keeps every frame until the sink
   acknowledges it) and with plain ones. Every process's resident memory is sampled twice a
   second; the figure is the largest peak of any one process in either run (the east
   router, which holds the queue). Reported next to it, per run: each process's peak, its
   RSS a fifth of the way in and at the end (bounded: it does not grow), the sum of the
   peaks, frames sent against frames received (nothing dropped) and the sink's rate against
   the link's.

4. recovery_s: the run of 1 again, four times: Virginia/worker/0, Virginia/ps/0,
   Virginia/mirror/0, then Virginia's router killed (SIGKILL) once the worker has finished
   clock 4; the launcher restarts it. Per role kind: seconds from the launcher seeing the
   crash until the new process has made progress: a worker's first clock (start-up,
   handshake, asking its shards where it was, one clock); a shard's first advance of its
   slowest worker's clock (start-up, loading the checkpoint, the replay by its workers and
   mirror, one clock); a mirror's first clock sent on to the other region (start-up, loading
   the checkpoint, the replay by its shards and its peer); a router's first clock reported
   by a role of its region once the new router listens (start-up, every role there
   reconnecting and sending again what it had not had acknowledged). Hubs are not restarted
   (null): their crash stops the run. The final objective, the frames sent again and the
   checkpoint costs (ms per write) are reported next to it.

Run: python benchmarks/bench_deploy.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Network, parse_topology
from geoml.bus.security import CurveKeys, make_keys
from geoml.bus.vclock import run_with_clock

MiB = 1 << 20


def status(text: str) -> None:
    """A progress line on stderr (stdout is the JSON)."""
    print(f"[bench_deploy] {text}", file=sys.stderr, flush=True)


def geoml(args: list[str]) -> float:
    """Run `geoml ARGS`; its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geoml.cli", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"geoml {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def launch_ratio(out: Path, clocks: int) -> dict[str, Any]:
    common = ["--topology", "vc_wan", "--system", "gaia", "--workload", "mf-movielens",
              "--iterations", str(clocks)]
    status(f"launch: {clocks} clocks of gaia on vc_wan as processes")
    wall_launch = geoml(["launch", *common, "--out", str(out / "launch")])
    status("launch: the same all-in-one")
    wall_aio = geoml(["run", *common, "--out", str(out / "allinone")])
    launched = json.loads((out / "launch" / "summary.json").read_text())
    aio = json.loads((out / "allinone" / "summary.json").read_text())
    return {"launch_elapsed_s": launched["elapsed_s"], "allinone_elapsed_s": aio["elapsed_s"],
            "launch_vs_allinone_time_ratio": launched["elapsed_s"] / aio["elapsed_s"],
            "launch_wall_s": wall_launch, "allinone_wall_s": wall_aio,
            "processes": len(launched["processes"]),
            "final_objective": {"launch": launched["final_objective"],
                                "allinone": aio["final_objective"]},
            "wan_bytes": {"launch": launched["wan_bytes"], "allinone": aio["wan_bytes"]},
            "filtered_fraction": {"launch": launched["filtered_fraction"],
                                  "allinone": aio["filtered_fraction"]}}


async def throughput(keys: CurveKeys | None, total: int, frame: int,
                     lan_mbps: float = 1e6) -> float:
    """MB/s from east/source/0 to west/sink/0 through two tcp routers."""
    # below Linux's ephemeral range (32768-60999), where a client socket may hold the port
    port = random.randrange(20000, 32760, 8)
    topo = parse_topology({
        "name": "bench", "defaults": {"host": "127.0.0.1", "base_port": port,
                                      "lan_rate_mbps": lan_mbps},
        "regions": [{"name": "east"}, {"name": "west"}],
        "links": [{"between": ["east", "west"], "rate_mbps": 1e6, "latency_ms": 0}]})
    async with Network(topo, transport="tcp", keys=keys) as net:
        src = await net.connect("east/source/0")
        dst = await net.connect("west/sink/0")
        payload = np.zeros(frame // 4, np.float32)
        n = total // frame

        async def receive() -> None:
            for _ in range(n):
                await dst.recv(timeout=60)

        start = time.perf_counter()
        reader = asyncio.ensure_future(receive())
        for _ in range(n):
            await src.send("west/sink/0", "bench.data", arrays=[payload])
        await reader
        return total / MiB / (time.perf_counter() - start)


def curve_overhead(out: Path, total: int) -> dict[str, Any]:
    make_keys(parse_topology({"name": "bench", "regions": [{"name": "east"},
                                                           {"name": "west"}]}), out / "keys")
    keys = CurveKeys(out / "keys")
    out_: dict[str, Any] = {}
    for lan, label in ((1e6, "unshaped"), (1000.0, "lan_1gbps")):
        rates: dict[str, list[float]] = {"plain": [], "curve": []}
        for _ in range(3):  # interleaved, best of three each
            for name, k in (("plain", None), ("curve", keys)):
                rates[name].append(run_with_clock(throughput(k, total, MiB, lan)))
                status(f"throughput {label} {name}: {rates[name][-1]:.0f} MB/s")
        plain, curve = max(rates["plain"]), max(rates["curve"])
        out_[label] = {"plain_mb_per_s": plain, "curve_mb_per_s": curve,
                       "curve_overhead_pct": 100.0 * (plain - curve) / plain, "runs": rates}
    return out_


OVERLOAD_TOPOLOGY = """
name = "overload"
[defaults]
host = "127.0.0.1"
base_port = {port}
lan_rate_mbps = 1000
[[regions]]
name = "east"
[[regions]]
name = "west"
lon = 10.0
[[links]]
between = ["east", "west"]
rate_mbps = {rate}
latency_ms = 30
"""


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _popen(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "geoml.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise SystemExit(f"no {needle!r} from {proc.args}: {proc.stderr.read() if proc.stderr else ''}")


def overload(out: Path, seconds: float, reliable: bool, rate_mbps: float = 200.0,
             sources: int = 3) -> dict[str, Any]:
    """Senders faster than their link for `seconds`: memory, losses, achieved rate."""
    mode = ["--reliable"] if reliable else []
    tag = "reliable" if reliable else "plain"
    topology = out / f"overload_{tag}.toml"
    topology.write_text(OVERLOAD_TOPOLOGY.format(port=random.randrange(20000, 32760, 8),
                                                 rate=rate_mbps))
    keys = out / f"overload_{tag}_keys"
    geoml(["keys", "--topology", str(topology), "--out", str(keys)])
    common = ["--topology", str(topology), "--keys", str(keys)]
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for region in ("east", "west"):
            procs[f"router {region}"] = _popen(["router", *common, "--region", region,
                                                "--status-every", "3600"])
        for name in ("router east", "router west"):
            _wait_for(procs[name], "listening on", 60)
        procs["sink"] = _popen(["role", *common, "--address", "west/sink/0", "--kind", "sink",
                                "--sources", str(sources), "--idle-timeout", "120", *mode])
        for i in range(sources):
            procs[f"source {i}"] = _popen([
                "role", *common, "--address", f"east/source/{i}", "--kind", "source",
                "--to", "west/sink/0", "--seconds", str(seconds), "--frame-bytes",
                str(256 * 1024), "--fresh-frames", *mode])
        status(f"overload: {sources} sources for {seconds:.0f} s into a {rate_mbps:.0f} "
               f"Mbit/s link ({'reliable' if reliable else 'plain'} endpoints)")
        peak: dict[str, float] = {}
        early: dict[str, float] = {}
        last: dict[str, float] = {}
        start = time.monotonic()
        roles = [n for n in procs if not n.startswith("router")]
        next_status = start + 10
        while any(procs[n].poll() is None for n in roles):
            for name, proc in procs.items():
                rss = _rss_mb(proc.pid) if proc.poll() is None else None
                if rss is None:
                    continue
                peak[name] = max(peak.get(name, 0.0), rss)
                last[name] = rss
                if time.monotonic() - start <= seconds / 5:
                    early[name] = rss
            if time.monotonic() >= next_status:
                status(f"overload: t={time.monotonic() - start:.0f}s router east "
                       f"{last.get('router east', 0):.0f} MB")
                next_status += 10
            if time.monotonic() - start > seconds + 120:
                raise SystemExit("overload: the sources or the sink did not finish")
            time.sleep(0.5)
        reports = {}
        for name in roles:
            stdout, stderr = procs[name].communicate(timeout=30)
            if procs[name].returncode != 0:
                raise SystemExit(f"overload: {name} failed:\n{stderr[-2000:]}")
            reports[name] = json.loads(stdout.strip().splitlines()[-1])
        routers = {}
        for region in ("east", "west"):
            proc = procs[f"router {region}"]
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=30)
            routers[region] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    sent = sum(reports[f"source {i}"]["sent"] for i in range(sources))
    got = reports["sink"]
    link = routers["east"]["links"]["east->west"]
    return {
        "overload_peak_rss_mb": max(peak.values()),
        "reliable_endpoints": reliable,
        "seconds": seconds, "link_rate_mbps": rate_mbps, "sources": sources,
        "peak_rss_mb": peak, "sum_of_peaks_mb": sum(peak.values()),
        "rss_mb_at_fifth": early, "rss_mb_at_end": last,
        "frames_sent": sent, "frames_received": got["frames"],
        "dropped": {r: routers[r]["dropped"] for r in routers},
        "sink_rate_mbps": got["rate_mbps"],
        "rate_vs_link": got["rate_mbps"] / rate_mbps,
        "link_max_queued_bytes": link["max_queued_bytes"],
        "sender_pauses": {n: reports[n].get("pauses") for n in reports if n != "sink"},
        "sender_unacked_at_close": {n: reports[n].get("unacked_at_close")
                                    for n in reports if n != "sink"},
    }


def recovery(out: Path, clocks: int, victim: str) -> dict[str, Any]:
    """kill -9 of `victim` once Virginia/worker/0 has finished clock 4; how long until the
    replacement is back (a worker: its first clock; a shard: its workers' first clock)."""
    run = out / "recovery" / victim.replace("/", "_")
    args = [sys.executable, "-m", "geoml.cli", "launch", "--topology", "vc_wan", "--system",
            "gaia", "--workload", "mf-movielens", "--iterations", str(clocks), "--out",
            str(run)]
    status(f"recovery: the gaia run again, {victim} killed after clock 4")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = "Virginia/worker/0"
    log = run / "logs" / f"{watched.replace('/', '_')}.log"
    deadline = time.monotonic() + 120
    try:
        while not (log.exists() and f"{watched} clock 4" in log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"recovery: {watched} never reached clock 4:\n"
                                 f"{proc.communicate()[1][-3000:]}")
            time.sleep(0.02)
        pid = json.loads((run / "processes.json").read_text())[victim]["pid"]
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"recovery: the run failed:\n{stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    (restart,) = summary["restarts"]
    shards = summary["shard_counters"]
    mirrors = {a: c for a, c in summary["gaia"]["roles"].items() if "/mirror/" in a}

    def per_write(counters: dict[str, dict[str, Any]]) -> float:
        return (sum(c.get("checkpoint_ms", 0) for c in counters.values())
                / max(1, sum(c.get("checkpoints", 0) for c in counters.values())))

    buses = [c["bus"] for c in [*shards.values(), *mirrors.values()]]
    return {"kind": restart["kind"], "recovery_s": restart["recovery_s"], "victim": victim,
            "final_objective": summary["final_objective"], "elapsed_s": summary["elapsed_s"],
            "counters": shards.get(victim) or mirrors.get(victim),
            "shards_and_mirrors_bus": {k: sum(b[k] for b in buses) for k in (
                "reconnects", "resent_frames", "duplicates", "abandoned")},
            "checkpoint_ms_per_write": {"ps_shard": per_write(shards),
                                        "mirror": per_write(mirrors)},
            "mirror_checkpoint_bytes": max(c.get("checkpoint_bytes", 0)
                                           for c in mirrors.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"))
    args = ap.parse_args()
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    launch = launch_ratio(args.out, 3 if args.quick else 10)
    curve = curve_overhead(args.out, (16 if args.quick else 64) * MiB)
    seconds = 10 if args.quick else 60
    load = {"reliable": overload(args.out, seconds, reliable=True),
            "plain": overload(args.out, seconds, reliable=False)}
    recs = [recovery(args.out, 10, v)
            for v in ("Virginia/worker/0", "Virginia/ps/0", "Virginia/mirror/0",
                      "router Virginia")]
    recovery_s: dict[str, float | None] = dict.fromkeys(
        ("worker", "ps_shard", "mirror", "hub", "router"))
    recovery_s.update({r["kind"]: r["recovery_s"] for r in recs})
    print(json.dumps({
        "launch_vs_allinone_time_ratio": launch["launch_vs_allinone_time_ratio"],
        "recovery_s": recovery_s,
        "curve_overhead_pct": curve["unshaped"]["curve_overhead_pct"],
        "overload_peak_rss_mb": max(v["overload_peak_rss_mb"] for v in load.values()),
        "launch": launch,
        "curve": curve,
        "overload": load,
        "recovery": recs,
        "not_built": ["restarts of hubs (they keep no checkpoint of their merges)"],
    }, indent=2))


if __name__ == "__main__":
    main()
