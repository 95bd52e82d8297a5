"""What an idle peer costs in one process (bench_scale's `idle_*` figures): resident
memory and open files per edge site (its router, its links, one connected endpoint) on
topologies/edge1000.toml, and per idle endpoint on one router, over inproc ZeroMQ sockets
or (`--transport memory`, fields ending in `_memory`) the memory transport. Prints one
JSON object. One transport a process: freed memory would hide the second one's cost.

Run: python benchmarks/idle_peers_case.py [--transport inproc|memory]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import uvloop

from geoml.bus import Network, load_topology


def rss_kb() -> int:
    """This process's resident set now, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_files() -> int:
    """File descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))


async def sites_case(transport: str) -> dict[str, Any]:
    topo = load_topology("edge1000")
    sites = [r for r in topo.region_names if r != "cloud"]
    rss0, fds0 = rss_kb(), open_files()
    async with Network(topo, transport=transport) as net:
        rss1, fds1 = rss_kb(), open_files()
        await asyncio.gather(*(net.connect(f"{s}/peer/0", timeout=60) for s in sites))
        rss2, fds2 = rss_kb(), open_files()
    n = len(sites)
    return {"sites": n,
            "idle_site_router_kb": (rss1 - rss0) / n, "idle_site_router_files": (fds1 - fds0) / n,
            "idle_site_endpoint_kb": (rss2 - rss1) / n,
            "idle_site_endpoint_files": (fds2 - fds1) / n,
            "idle_site_kb": (rss2 - rss0) / n, "idle_site_files": (fds2 - fds0) / n}


async def endpoints_case(transport: str, n: int = 1000) -> dict[str, Any]:
    topo = load_topology("lan")
    async with Network(topo, transport=transport) as net:
        rss0, fds0 = rss_kb(), open_files()
        region = topo.region_names[0]
        await asyncio.gather(*(net.connect(f"{region}/peer/{i}", timeout=60)
                               for i in range(n)))
        rss1, fds1 = rss_kb(), open_files()
    return {"endpoints": n, "idle_endpoint_kb": (rss1 - rss0) / n,
            "idle_endpoint_files": (fds1 - fds0) / n}


async def main(transport: str) -> dict[str, Any]:
    figures = {**await endpoints_case(transport), **await sites_case(transport)}
    suffix = "" if transport == "inproc" else f"_{transport}"
    return {k if k in ("sites", "endpoints") else k + suffix: v for k, v in figures.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", default="inproc", choices=("inproc", "memory"))
    print(json.dumps(uvloop.run(main(ap.parse_args().transport))))
