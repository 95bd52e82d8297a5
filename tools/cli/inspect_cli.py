"""`geoml inspect`: watch routers' taps live (one process per role), or report a recording."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

import uvloop
import zmq

from geoml.bus import GeomlError, load_topology

from ..inspector import LiveView, TapSubscriber
from ..recording import Recorder, build_report, topology_header
from ..traffic import EventFilter, TrafficStats, capacities
from .process import keys_of, read_endpoints


def inspect_main(args: argparse.Namespace) -> int:
    """Entry point of `geoml inspect`."""
    if args.action:
        if args.action[0] != "report" or len(args.action) != 2:
            raise GeomlError("usage: geoml inspect report FILE --out DIR "
                             "(or geoml inspect --topology F for the live view)")
        if args.out is None:
            raise GeomlError("geoml inspect report needs --out DIR")
        from pathlib import Path

        summary = build_report(Path(args.action[1]), args.out)
        print(json.dumps({k: summary[k] for k in ("topology", "events", "complete",
                                                   "wan_bytes", "lan_bytes")}, indent=2))
        print(f"wrote {args.out}/summary.json, traffic_matrix.png, utilisation.png, "
              "frame_types.png")
        return 0
    if not args.topology:
        raise GeomlError("geoml inspect needs --topology F (the routers to watch) or "
                         "`report FILE --out DIR`")
    topo = load_topology(args.topology)
    if args.endpoints is not None:  # a `geoml launch` run's routers, on the ports they got
        topo = topo.with_endpoints(read_endpoints(args.endpoints))
    event_filter = EventFilter(args.region, args.role, args.ftype)
    if args.region is not None:
        topo.region(args.region)
    return int(uvloop.run(_live(topo, event_filter, args)))


async def _live(topo: Any, event_filter: EventFilter, args: argparse.Namespace) -> int:
    ctx: zmq.Context[Any] = zmq.Context()
    recorder = (Recorder(args.record, topology_header(topo)) if args.record else None)
    endpoints = {r: topo.endpoints(r, "tcp")[1] for r in topo.region_names}
    tap = TapSubscriber(ctx, endpoints, TrafficStats(event_filter), recorder,
                        keys=keys_of(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.seconds is not None:
        loop.call_later(args.seconds, stop.set)
    try:
        await tap.start()
        view = LiveView(tap.stats, capacities(topo), tap.reach,
                        status=lambda: f"geoml inspect: {topo.name}, "
                                       f"{len(endpoints)} router(s)")
        task = asyncio.ensure_future(view.run())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await tap.aclose()
        view.draw()
    finally:
        if recorder is not None:
            recorder.close()
        ctx.destroy(linger=0)
    return 0
