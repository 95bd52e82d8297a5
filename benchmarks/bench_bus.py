"""Bus benchmark: prints one JSON object (see issue [bus]).

Fields: router_vs_raw_large, small_frames_per_s, shaping_error_pct_max,
latency_error_ms_max, control_wait_ms_p99, tap_overhead_pct, and (issue [fast])
ps_bsp_small_model_clocks_per_s, small_frames_per_s_memory (the same case over the memory
transport), and small frames/s beside the same cases replayed on the
code before [fast] (`--baseline REV`, default be11c52; benchmarks/replay.py), plus the raw
figures behind each.
Run: python benchmarks/bench_bus.py [--quick] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import zmq
import zmq.asyncio

from geoml.bus import Network, parse_topology
from geoml.bus.router import TAP_TOPIC
from geoml.bus.zio import ZIO
from geoml.inspector import TapSubscriber
from geoml.recording import Recorder, topology_header
from geoml.traffic import TrafficStats, split_tap_message, unpack_events

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import replay_tree, run_case

MiB = 1 << 20


def two_regions(rate_mbps: float, latency_ms: float, lan: float = math.inf,
                queue_limit: int = 16 * MiB) -> Any:
    return parse_topology({
        "name": "bench",
        "defaults": {"lan_rate_mbps": lan, "queue_limit_bytes": queue_limit},
        "regions": [{"name": "a"}, {"name": "b"}],
        "links": [{"between": ["a", "b"], "rate_mbps": rate_mbps, "latency_ms": latency_ms}],
    })


def progress(msg: str) -> None:
    print(f"[bench_bus] {msg}", file=sys.stderr, flush=True)


async def raw_large(ctx: zmq.asyncio.Context, payload: np.ndarray, n: int) -> float:
    """Bytes/s of raw PUSH/PULL over inproc on this event loop."""
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    pull.bind("inproc://bench-raw")
    push.connect("inproc://bench-raw")

    async def sender() -> None:
        for _ in range(n):
            await push.send_multipart([b"h", payload], copy=False)

    async def receiver() -> None:
        for _ in range(n):
            await pull.recv_multipart(copy=False)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(sender(), receiver()), 120)
    dt = time.perf_counter() - t0
    push.close(linger=0)
    pull.close(linger=0)
    return n * payload.nbytes / dt


async def through_router(payload: np.ndarray, n: int, lan_mbps: float = math.inf,
                         record: Path | None = None, live: bool = False,
                         transport: str = "inproc") -> float:
    """Frames/s (and thus bytes/s) from one role to another through one router; with
    `record`, a tap subscriber records every event to that file meanwhile (and with `live`
    also keeps the live view's figures)."""
    topo = two_regions(100, 10, lan=lan_mbps)
    async with Network(topo, transport=transport) as net:
        tap = None
        if record is not None:
            router = net.routers["a"]
            tap = TapSubscriber(net.ctx, {"a": router.tap_endpoint},
                                TrafficStats() if live else None,
                                Recorder(record, topology_header(topo)))
            await tap.start()
            await router.wait_tap_subscribed()
        src = await net.connect("a/src/0")
        dst = await net.connect("a/sink/0")

        async def sender() -> None:
            for _ in range(n):
                await src.send("a/sink/0", "bench.data", arrays=[payload])

        async def receiver() -> None:
            for _ in range(n):
                await dst.recv()

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(sender(), receiver()), 300)
        dt = time.perf_counter() - t0
        if tap is not None:
            net.routers["a"].flush_tap()
            await tap.aclose()
            assert tap.recorder is not None
            tap.recorder.close()
            if tap.recorder.events != n:
                raise RuntimeError(f"tap recorded {tap.recorder.events} of {n} frames")
    return n / dt


async def tap_overhead(n: int, rounds: int) -> dict[str, Any]:
    """Small-frame router throughput with one recording tap subscriber vs none, and with
    a subscriber that also keeps the live view's figures (all on the same event loop)."""
    small = np.zeros(100, dtype=np.uint8)
    plain, recorded, live = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            progress(f"tap overhead, round {r + 1}/{rounds}")
            plain.append(await through_router(small, n, lan_mbps=1000))
            recorded.append(await through_router(small, n, lan_mbps=1000,
                                                 record=Path(tmp) / "bench.tap"))
            live.append(await through_router(small, n, lan_mbps=1000,
                                             record=Path(tmp) / "bench.tap", live=True))
    rec = [(p - q) / p * 100 for p, q in zip(plain, recorded, strict=True)]
    liv = [(p - q) / p * 100 for p, q in zip(plain, live, strict=True)]
    return {"frames_per_s_no_tap": plain, "frames_per_s_recording": recorded,
            "frames_per_s_recording_and_live_figures": live,
            "overhead_pct_rounds": rec, "overhead_live_pct_rounds": liv,
            "tap_overhead_pct": statistics.median(rec),
            "tap_overhead_live_pct": statistics.median(liv)}


async def shaping_error(rate_mbps: float, seconds: float) -> dict[str, float]:
    """Saturate a WAN link; compare the steady-state delivered rate with the configured one."""
    topo = two_regions(rate_mbps, 5)
    frame_bytes = max(1024, int(rate_mbps * 1e6 / 8 * 0.01))  # ~10 ms of link time each
    payload = np.zeros(frame_bytes, dtype=np.uint8)
    warmup = 0.5
    async with Network(topo) as net:
        src = await net.connect("a/src/0")
        dst = await net.connect("b/sink/0")
        stop = asyncio.Event()

        async def sender() -> None:
            while not stop.is_set():
                await src.send("b/sink/0", "bench.data", arrays=[payload])

        arrivals: list[tuple[float, int]] = []

        async def receiver() -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + warmup + seconds
            while loop.time() < end:
                try:
                    m = await dst.recv(timeout=max(0.01, end - loop.time()))
                except TimeoutError:
                    break
                arrivals.append((time.perf_counter(), m.nbytes))
            stop.set()

        task = asyncio.ensure_future(sender())
        await asyncio.wait_for(receiver(), warmup + seconds + 30)
        task.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await task
    t_first = arrivals[0][0]
    window = [(t, b) for t, b in arrivals if t >= t_first + warmup]
    # bytes that arrived after the first in-window arrival, over the time they took
    elapsed = window[-1][0] - window[0][0]
    achieved_bps = sum(b for _, b in window[1:]) * 8 / elapsed
    configured = rate_mbps * 1e6
    return {"rate_mbps": rate_mbps, "achieved_mbps": achieved_bps / 1e6,
            "error_pct": abs(achieved_bps - configured) / configured * 100}


async def latency_error(latency_ms: float, samples: int) -> dict[str, float]:
    """One-way delay of small frames on an idle link, measured with perf_counter."""
    topo = two_regions(100, latency_ms)
    delays = []
    async with Network(topo) as net:
        src = await net.connect("a/src/0")
        dst = await net.connect("b/sink/0")
        for _ in range(samples):
            t0 = time.perf_counter()
            await src.send("b/sink/0", "bench.ping", arrays=[np.zeros(100, np.uint8)])
            await dst.recv(timeout=5)
            delays.append((time.perf_counter() - t0) * 1e3)
    return {"configured_ms": latency_ms, "mean_ms": statistics.fmean(delays),
            "median_ms": statistics.median(delays), "max_ms": max(delays),
            "error_ms": abs(statistics.fmean(delays) - latency_ms)}


async def control_wait(big_mib: int, rate_mbps: float) -> dict[str, float]:
    """Queueing delay of control frames while a big data frame crosses the link."""
    topo = two_regions(rate_mbps, 5, queue_limit=(big_mib + 1) * MiB)
    chunk = topo.wan_spec("a", "b").chunk_bytes
    async with Network(topo) as net:
        sock = net.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, TAP_TOPIC)
        sock.connect(net.routers["a"].tap_endpoint)
        sub = ZIO(sock)
        src = await net.connect("a/src/0")
        dst = await net.connect("b/sink/0")
        await net.routers["a"].wait_tap_subscribed()
        big = np.zeros(big_mib * MiB, dtype=np.uint8)
        await src.send("b/sink/0", "bench.big", arrays=[big])
        transmit_s = big.nbytes * 8 / (rate_mbps * 1e6)
        loop = asyncio.get_running_loop()
        end = loop.time() + transmit_s * 0.9
        sent = 0
        while loop.time() < end:
            await src.send("b/sink/0", "bench.ctl", control=True, meta={"i": sent})
            sent += 1
            await asyncio.sleep(0.02)
        got = 0
        while got < sent + 1:
            m = await dst.recv(timeout=transmit_s + 10)
            got += 1
            if m.type == "bench.big":
                break
        delays = []
        while len(delays) < sent:
            parts = await asyncio.wait_for(sub.recv(), 10)
            count, stream = split_tap_message([p.bytes for p in parts])
            for ev in unpack_events(stream, count):
                if ev.link == "a->b" and ev.ftype == "bench.ctl":
                    delays.append(ev.queue_delay * 1e3)
        sub.close()
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    chunk_ms = chunk * 8 / (rate_mbps * 1e6) * 1e3
    return {"samples": len(delays), "p99_ms": p99, "max_ms": delays[-1],
            "chunk_ms": chunk_ms, "floor_ms": chunk_ms + 2}


def small_frames_replayed(frames: int, pairs: int, baseline: str) -> dict[str, Any]:
    """The small-frame case (small_frames_case.py) in interleaved pairs of child processes:
    this code, then commit `baseline` replayed."""
    case = Path(__file__).resolve().parent / "small_frames_case.py"
    try:
        tree = replay_tree(baseline)
    except RuntimeError as exc:
        return {"baseline_rev": baseline, "error": str(exc)}
    new, old = [], []
    for r in range(pairs):
        progress(f"small frames, pair {r + 1}/{pairs}: this code, then {baseline}")
        new.append(json.loads(run_case(case, [str(frames)], None)))
        old.append(json.loads(run_case(case, [str(frames)], tree)))
    return {"baseline_rev": baseline, "frames": frames, "frames_per_s": new,
            "baseline_frames_per_s": old,
            "small_frames_per_s_this_code": statistics.median(new),
            "small_frames_per_s_baseline": statistics.median(old),
            "speedup": statistics.median(n / o for n, o in zip(new, old, strict=True))}


def ps_small_model(clocks: int, pairs: int, baseline: str) -> dict[str, Any]:
    """The 4-worker BSP PS on digits softmax, one minibatch per clock (ps_small_case.py),
    in interleaved pairs: this code, then commit `baseline` replayed; and this code with
    every computation in the executor (what it gains from running short ones inline), and
    over the memory transport."""
    case = Path(__file__).resolve().parent / "ps_small_case.py"
    try:
        tree = replay_tree(baseline)
    except RuntimeError as exc:
        return {"baseline_rev": baseline, "error": str(exc),
                "ps_bsp_small_model_clocks_per_s": None}
    new, old, no_inline, memory, ratios = [], [], [], [], []
    for r in range(pairs):
        progress(f"PS BSP small model, pair {r + 1}/{pairs}: this code, then {baseline}")
        new.append(json.loads(run_case(case, [str(clocks)], None))["clocks_per_s"])
        old.append(json.loads(run_case(case, [str(clocks)], tree))["clocks_per_s"])
        no_inline.append(json.loads(run_case(case, [str(clocks), "--no-inline"], None))[
            "clocks_per_s"])
        memory.append(json.loads(run_case(case, [str(clocks), "--memory"], None))[
            "clocks_per_s"])
        ratios.append(new[-1] / old[-1])
    return {"baseline_rev": baseline, "reference": f"replay of commit {baseline}",
            "clocks": clocks, "clocks_per_s": new, "baseline_clocks_per_s": old,
            "without_inline_clocks_per_s": no_inline, "speedup_rounds": ratios,
            "ps_bsp_small_model_clocks_per_s": statistics.median(new),
            "ps_bsp_small_model_baseline_clocks_per_s": statistics.median(old),
            "ps_bsp_small_model_without_inline_clocks_per_s": statistics.median(no_inline),
            "memory_clocks_per_s": memory,
            "ps_bsp_small_model_memory_clocks_per_s": statistics.median(memory),
            "ps_bsp_small_model_speedup": statistics.median(ratios)}


async def main(quick: bool, baseline: str = "be11c52") -> dict[str, Any]:
    out: dict[str, Any] = {}
    payload = np.ones(4 * MiB, dtype=np.uint8)
    n_large, rounds = (300, 3) if quick else (1000, 5)
    # Interleaved rounds, median ratio: one round lasts tens of ms, which is noisy here.
    ratios, raws, routeds = [], [], []
    for r in range(rounds):
        progress(f"4 MiB frames, round {r + 1}/{rounds}: raw PUSH/PULL, then one router")
        ctx = zmq.asyncio.Context()  # raw pyzmq, as a user of plain pyzmq would write it
        raw = await raw_large(ctx, payload, n_large)
        ctx.term()
        routed = await through_router(payload, n_large) * payload.nbytes
        raws.append(raw / 1e6)
        routeds.append(routed / 1e6)
        ratios.append(routed / raw)
    out["raw_large_MBps"] = raws
    out["router_large_MBps"] = routeds
    out["router_vs_raw_large_rounds"] = ratios
    out["router_vs_raw_large"] = statistics.median(ratios)

    progress("small frames")
    small, small_n = np.zeros(100, dtype=np.uint8), 20_000 if quick else 100_000
    out["small_frames_per_s"] = await through_router(small, small_n, lan_mbps=1000)
    progress("small frames over the memory transport")
    out["small_frames_per_s_memory"] = await through_router(small, small_n, lan_mbps=1000,
                                                            transport="memory")

    seconds = 1.0 if quick else 3.0
    shaping = []
    for rate in (1, 10, 100, 1000):
        progress(f"shaping at {rate} Mbit/s for {seconds}s")
        shaping.append(await shaping_error(rate, seconds))
    out["shaping"] = shaping
    out["shaping_error_pct_max"] = max(s["error_pct"] for s in shaping)

    lat = []
    for ms in (5, 50, 150):
        progress(f"latency {ms} ms")
        lat.append(await latency_error(ms, 10 if quick else 30))
    out["latency"] = lat
    out["latency_error_ms_max"] = max(x["error_ms"] for x in lat)

    tap = await tap_overhead(20_000 if quick else 50_000, 3)
    out["tap"] = tap
    out["tap_overhead_pct"] = tap["tap_overhead_pct"]
    out["tap_overhead_live_pct"] = tap["tap_overhead_live_pct"]

    progress("control frames behind a 64 MiB data frame at 100 Mbit/s")
    cw = await control_wait(16 if quick else 64, 100)
    out["control_wait"] = cw
    out["control_wait_ms_p99"] = cw["p99_ms"]
    out["control_wait_floor_ms"] = cw["floor_ms"]

    replayed = small_frames_replayed(20_000 if quick else 50_000, 3, baseline)
    out["small_frames_replayed"] = replayed
    out["small_frames_speedup_vs_baseline"] = replayed.get("speedup")

    ps = ps_small_model(300 if quick else 1000, 3, baseline)
    out["ps_small_model"] = ps
    for key in ("ps_bsp_small_model_clocks_per_s", "ps_bsp_small_model_baseline_clocks_per_s",
                "ps_bsp_small_model_speedup", "ps_bsp_small_model_memory_clocks_per_s"):
        out[key] = ps.get(key)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (CI smoke)")
    parser.add_argument("--baseline", default="be11c52",
                        help="commit replayed for ps_bsp_small_model (default: before [fast])")
    args = parser.parse_args()
    result = uvloop.run(main(args.quick, args.baseline))
    print(json.dumps(result, indent=2))
