"""Shared fixtures: real ZeroMQ sockets, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import msgpack
import numpy as np
import pytest
import pytest_asyncio
import zmq

from geoml.bus import Network, Topology, load_topology, memory, parse_topology, security
from geoml.bus import frame as fr
from geoml.bus.zio import ZIO
from geoml.roles.compute import ComputeCost
from geoml.workloads import Params, Partition, Workload


@pytest.fixture
def tiny() -> Topology:
    return load_topology("tiny")


def make_topology(**overrides: object) -> Topology:
    """Two regions a and b; keyword overrides go into [defaults] or the a<->b link."""
    link = {"between": ["a", "b"], "rate_mbps": overrides.pop("rate_mbps", 100.0),
            "latency_ms": overrides.pop("latency_ms", 10.0)}
    return parse_topology({
        "name": "t",
        "defaults": {"lan_rate_mbps": 1000.0, **overrides},
        "regions": [{"name": "a", "lat": 0.0, "lon": 0.0}, {"name": "b", "lat": 0.0, "lon": 1.0}],
        "links": [link],
    })


@pytest_asyncio.fixture(params=["inproc", "memory"])
async def net(request: pytest.FixtureRequest, tiny: Topology) -> AsyncIterator[Network]:
    """tiny.toml's routers, over inproc ZeroMQ sockets and over the memory transport."""
    network = Network(tiny, transport=request.param, unreachable_timeout_s=1.0)
    await network.start(timeout=5)
    try:
        yield network
    finally:
        await network.aclose()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the event loop brings about (bounded by `timeout`)."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(ports: int = 8) -> int:
    """A base port for a topology (region i binds base + 2i and base + 2i + 1) whose next
    `ports` ports are free now. Below Linux's ephemeral range (32768-60999), so a client
    socket of this or another run cannot be holding one of them."""
    for _ in range(500):
        base = random.randrange(20000, 32768 - ports, 8)
        if all(_bindable(base + i) for i in range(ports)):
            return base
    raise RuntimeError("no block of free ports below 32768 on 127.0.0.1")


def topology_on_free_ports(path: Path, toml_text: str) -> Path:
    """Write `toml_text` (with `{port}` for its base_port) to `path`, on free ports."""
    path.write_text(toml_text.format(port=free_base_port()))
    return path


#: What one test may spend waiting on processes: below pytest-timeout's 120 s, so a test
#: that waits too long fails with its own message rather than being killed.
PROCESS_TEST_BUDGET_S = 100.0


class Deadline:
    """One time budget shared by every wait of a test (waits must not add up past it)."""

    def __init__(self, seconds: float = PROCESS_TEST_BUDGET_S) -> None:
        self.at = time.monotonic() + seconds

    def left(self, at_most: float | None = None) -> float:
        """Seconds left (at least a little, so a last wait still gets its chance)."""
        left = max(0.1, self.at - time.monotonic())
        return left if at_most is None else min(left, at_most)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read `proc`'s stdout (at the file descriptor, so a partial line never blocks) until a
    line containing `needle`; AssertionError after `timeout` or at end of output."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    pending = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if needle in line.decode(errors="replace"):
                return line.decode(errors="replace")
    if proc.poll() is None:
        raise AssertionError(f"no line with {needle!r} within {timeout:.0f}s; still running")
    stderr = proc.stderr.read() if proc.stderr is not None else ""
    raise AssertionError(f"no line with {needle!r}; it exited {proc.returncode}; "
                         f"stderr: {stderr}")


@contextlib.asynccontextmanager
async def raw_dealer(net: Network, address: str, *, at: str | None = None,
                     key: str | None = None) -> AsyncIterator[ZIO]:
    """A bare DEALER socket whose routing id is `address` (any it likes, "#secret"
    included), connected to the router of region `at` (default: the address's region) and
    not yet registered (closed with linger 0 on the way out). On a network with keys it
    holds the key `key` (default: its address's REGION.ROLE, as a role would). Over the
    memory transport, the memory DEALER that stands for the socket."""
    region, role = address.split("#")[0].split("/")[:2]
    at = at or region
    if net.transport == "memory":
        dealer = memory.connect_dealer(net.routers[at].endpoint, address.encode())
        try:
            yield dealer  # type: ignore[misc]
        finally:
            dealer.close()
        return
    sock = net.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, address.encode())
    if net.keys is not None:
        security.client(sock, net.keys.pair(key or f"{region}.{role}"),
                        net.keys.public(f"{at}.router"))
    else:
        assert key is None, "a key needs a network with keys"
    sock.connect(net.routers[at].endpoint)
    client = ZIO(sock)
    try:
        yield client
    finally:
        client.close()  # unregisters its reader from the loop, then closes with linger 0


@contextlib.asynccontextmanager
async def raw_client(net: Network, address: str) -> AsyncIterator[ZIO]:
    """A client written from docs/PROTOCOL.md alone: a raw DEALER registered with
    `bus.hello` at its region's router (welcome checked)."""
    region, role, _ = address.split("/")
    async with raw_dealer(net, address) as client:
        hello = fr.make_header(fr.HELLO, address, f"{region}/router/0", 0, priority=0,
                               meta={"role": role, "credit": False, "inc": 1})
        await client.send([fr.encode_header(hello)])
        welcome = await asyncio.wait_for(client.recv(), 5)
        assert msgpack.unpackb(welcome[0].bytes)["t"] == fr.WELCOME
        yield client


class SlowPasses(Workload):
    """Wraps a workload; a pass costs `delay(part, clock)` seconds of compute. Run it under
    virtual time with `compute=SlowPasses.COST`: each pass is charged that long exactly (a
    slow machine, not a blocked loop), whatever this machine is doing meanwhile."""

    #: One charged "example" is one microsecond.
    COST = ComputeCost(1e-6)

    def __init__(self, inner: Workload, delay: Callable[[Partition, int], float]) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.objective_name = inner.name, inner.objective_name

    def pass_examples(self, part: Partition, clock: int) -> int:
        return round(self.delay(part, clock) / self.COST.per_example_s)

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return self.inner.table_shapes()

    def init_params(self) -> Params:
        return self.inner.init_params()

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        return self.inner.partition(workers)

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        return self.inner.local_pass(params, part, clock)

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        return self.inner.evaluate(params, subset)
