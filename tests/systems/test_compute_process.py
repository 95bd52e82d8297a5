"""Compute in a process of its own: resident objects, canonical arrays, clear failures."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import numpy as np
import pytest

from geoml.bus import GeomlError
from geoml.roles.compute import Compute, ComputeFailed, ComputeProcess
from geoml.systems import RunConfig, run_system
from geoml.workloads import make_workload


class _Counted:
    """A resident object that counts how often this process pickled it."""

    pickled = 0

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        _Counted.pickled += 1
        return _Counted, (self.data,)

    def scaled(self, params: dict[str, np.ndarray], by: float) -> dict[str, Any]:
        return {"sum": params["w"] * by + self.data, "pid": os.getpid()}


def _exit_now() -> None:
    os._exit(3)


@pytest.mark.asyncio
async def test_a_process_holds_its_objects_and_each_call_ships_only_its_arguments() -> None:
    resident = _Counted(np.arange(4, dtype=np.float32))
    compute = Compute(process=ComputeProcess([resident], "east/worker/0"))
    try:
        await asyncio.wait_for(compute.start(), 60)
        before = _Counted.pickled
        params = {"w": np.ones(4, np.float32)}
        for _ in range(3):
            out = await asyncio.wait_for(compute.run(resident.scaled, params, 2.0), 30)
        assert _Counted.pickled == before  # the resident object was sent once, at start
        assert out["pid"] != os.getpid()
        np.testing.assert_array_equal(out["sum"], np.arange(4) + 2.0)
        # arrays come back with numpy's own dtype object (an unpickled copy of it makes
        # np.add.at take a slow path)
        assert out["sum"].dtype is np.dtype(np.float32) and out["sum"].flags.writeable
        assert compute.calls == 3 and compute.cpu_s > 0 and compute.charged_s == 0
    finally:
        compute.close()


@pytest.mark.asyncio
async def test_a_dead_compute_process_and_an_unsendable_object_are_clear_errors() -> None:
    dying = ComputeProcess([], "east/worker/1")
    try:
        with pytest.raises(ComputeFailed, match="east/worker/1: its compute process died"):
            await asyncio.wait_for(dying.call(_exit_now, ()), 60)
    finally:
        dying.close()
    lock = ComputeProcess([threading.Lock()], "west/worker/0")
    with pytest.raises(GeomlError, match="west/worker/0: its workload cannot be sent"):
        await asyncio.wait_for(lock.start(), 60)


@pytest.mark.parametrize("system", ["baseline", "fedavg"])
def test_runs_with_workers_in_processes_train_as_in_threads(system: str) -> None:
    """Through the real bus: the same seeded run with workers in processes and in threads
    moves the same bytes and trains the model to the same place. Both systems are
    synchronous (BSP rounds, FedAvg rounds), so every frame is the same whatever the order
    the workers finish in; only the order a shard or the aggregator adds updates in
    differs, a float32 rounding."""
    workload = make_workload("softmax-digits")
    results = {}
    for where in ("processes", "threads"):
        cfg = RunConfig(topology="tiny", system=system, workload=workload, iterations=4,
                        quiet=True, compute_in=where)
        results[where] = asyncio.run(asyncio.wait_for(run_system(cfg), 120))
    procs, threads = results["processes"], results["threads"]
    assert procs.curve[-1]["clock"] == threads.curve[-1]["clock"] == 4
    assert procs.summary["wan_bytes"] == threads.summary["wan_bytes"] > 0
    assert procs.summary["lan_bytes"] == threads.summary["lan_bytes"]
    for a, b in zip(procs.curve, threads.curve, strict=True):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-5), a["clock"]
    assert procs.curve[-1]["objective"] < 0.95 * procs.curve[0]["objective"]
    computes = [r.compute for a, r in procs.roles.items() if "/worker/" in a] \
        if system == "fedavg" else [w.compute for w in procs.workers]
    assert len(computes) == 4 and all(c.process is not None and c.calls == 4
                                      for c in computes)
