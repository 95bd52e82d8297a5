"""Federated averaging through the real bus: exact averaging, deadlines, bad updates."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from geoml.bus import Network, parse_topology
from geoml.bus.vclock import run_virtual
from geoml.roles.fedavg import (
    MODEL,
    UPDATE,
    FedAggregator,
    FedAvgConfig,
    FedClient,
    select_clients,
)
from geoml.systems import RunConfig, run_system
from geoml.workloads import make_workload

from ..conftest import SlowPasses


def two_regions(workers: int = 1) -> object:
    return parse_topology({
        "name": "two", "defaults": {"workers": workers, "ps_shards": 1},
        "regions": [{"name": "east"}, {"name": "west", "lon": 10.0}],
        "links": [{"between": ["east", "west"], "rate_mbps": 20.0, "latency_ms": 10.0}]})


@pytest.mark.asyncio
async def test_each_round_is_the_sample_weighted_mean_of_the_clients_models() -> None:
    """The aggregator and four clients through the real bus. East's one client holds
    three times the data of each of west's three, so an unweighted mean would differ."""
    wl = make_workload("softmax-digits")
    parts = wl.partition({"east": 1, "west": 3})
    sizes = sorted(p.size for p in parts.values())
    assert sizes[-1] > 2.5 * sizes[0]
    clients = [f"{r}/worker/{w}" for r, w in parts]
    async with Network(two_regions()) as net:
        agg = FedAggregator(await net.connect("east/aggregator/0"), wl, clients,
                            wl.init_params(), FedAvgConfig(epochs=2), rounds=2)
        roles = [FedClient(await net.connect(f"{r}/worker/{w}"), wl, part,
                           "east/aggregator/0", 2) for (r, w), part in parts.items()]
        running = [asyncio.ensure_future(c.run()) for c in roles]
        assert await asyncio.wait_for(agg.run(), 60) == 2
        assert await asyncio.wait_for(asyncio.gather(*running), 10) == [2] * 4
    params = wl.init_params()
    for round_ in range(2):
        total = sum(p.size for p in parts.values())
        mean = {t: np.zeros_like(v, np.float64) for t, v in params.items()}
        for part in parts.values():
            local = params
            for epoch in range(2):  # E = 2: passes 2r and 2r+1 of this client
                local = wl.local_pass(local, part, 2 * round_ + epoch)
            for t in mean:
                mean[t] += part.size * (local[t] - params[t])
        params = {t: params[t] + (mean[t] / total).astype(np.float32) for t in params}
    for t in params:
        np.testing.assert_allclose(agg.params[t], params[t], atol=1e-6)
    assert agg.counters["averaged"] == 8 and agg.history == [(4, 4), (4, 4)]


def test_a_fedavg_run_reports_its_rounds_and_moves_no_raw_data() -> None:
    """The same system through the harness: what its summary says of the rounds."""
    result = run_virtual(run_system(RunConfig(
        two_regions(workers=2), "fedavg", make_workload("softmax-digits"), iterations=2,
        quiet=True, fed=FedAvgConfig(epochs=2))))
    s = result.summary
    assert s["iterations"] == 2 and s["fedavg"]["averaged"] == 8
    assert s["raw_wan_frames"] == 0 and s["wan_bytes"] > 0
    assert [row["clock"] for row in result.curve] == [0, 1, 2]


def test_a_fraction_of_the_clients_is_asked_each_round_and_the_draw_is_seeded() -> None:
    clients = [f"r/worker/{i}" for i in range(10)]
    rounds = [select_clients(clients, 0.3, r, seed=1) for r in range(20)]
    assert all(len(c) == 3 and len(set(c)) == 3 for c in rounds)
    assert len({tuple(c) for c in rounds}) > 1  # a different draw from round to round
    assert rounds == [select_clients(clients, 0.3, r, seed=1) for r in range(20)]
    assert select_clients(clients, 0.01, 0, seed=1) != []  # at least one client


def test_a_straggler_is_left_out_of_its_round_and_its_late_update_is_counted() -> None:
    """Virtual time: worker 1's first pass costs 0.9 s, past round 0's 0.6 s deadline;
    every other pass costs 0.1 s."""
    wl = SlowPasses(make_workload("softmax-digits"),
                    lambda part, clock: 0.9 if part.worker == 1 and clock == 0 else 0.1)
    topo = parse_topology({"name": "one", "defaults": {"workers": 2, "ps_shards": 1},
                           "regions": [{"name": "home"}]})
    result = run_virtual(run_system(RunConfig(
        topo, "fedavg", wl, iterations=3, quiet=True, compute=SlowPasses.COST,
        fed=FedAvgConfig(deadline_s=0.6))))
    fed = result.summary["fedavg"]
    assert fed["rounds"] == 3 and fed["asked"] == 6
    assert fed["missed_deadline"] == 1 and fed["late_updates"] == 1
    assert fed["averaged"] == 5
    assert result.roles["home/aggregator/0"].history == [(2, 1), (2, 2), (2, 2)]
    # Round 0 closed at its deadline, not when the straggler came in.
    assert result.curve[1]["time_s"] == pytest.approx(0.6, abs=0.05)


def test_a_client_that_never_connects_does_not_stall_the_rounds() -> None:
    """Virtual time: each round waits exactly its 0.3 s deadline for the missing client."""
    topo = parse_topology({"name": "one", "regions": [{"name": "home"}]})
    wl = make_workload("softmax-digits")

    async def main() -> tuple[FedAggregator, int, float]:
        async with Network(topo, unreachable_timeout_s=0.5) as net:
            agg = FedAggregator(await net.connect("home/aggregator/0"), wl,
                                ["home/worker/0", "home/worker/1"], wl.init_params(),
                                FedAvgConfig(deadline_s=0.3), rounds=3)
            client = FedClient(await net.connect("home/worker/0"), wl,
                               wl.partition({"home": 1})[("home", 0)], "home/aggregator/0", 1)
            client_task = asyncio.ensure_future(client.run())
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await agg.run() == 3
            took = loop.time() - t0
            return agg, await client_task, took

    agg, client_rounds, took = run_virtual(main())
    assert client_rounds == 3
    assert agg.counters["missed_deadline"] == 3 and agg.counters["averaged"] == 3
    assert agg.history == [(2, 1)] * 3
    assert took == pytest.approx(3 * 0.3, abs=0.01)  # three deadlines, nothing longer


@pytest.mark.asyncio
async def test_malformed_and_stranger_updates_are_refused_and_the_round_goes_on() -> None:
    topo = parse_topology({"name": "one", "regions": [{"name": "home"}]})
    wl = make_workload("softmax-digits")
    shapes = wl.table_shapes()
    async with Network(topo) as net:
        agg = FedAggregator(await net.connect("home/aggregator/0"), wl, ["home/worker/0"],
                            wl.init_params(), FedAvgConfig(deadline_s=10), rounds=1)
        client = await net.connect("home/worker/0")
        stranger = await net.connect("home/worker/5")
        run = asyncio.ensure_future(agg.run())
        model = await client.recv(timeout=5)
        assert model.type == MODEL and model.meta["round"] == 0
        good = [np.ones(shapes[t], np.float32) for t in model.meta["tables"]]
        meta = {"round": 0, "samples": 10, "tables": model.meta["tables"],
                "sparse": [False] * len(good)}
        await stranger.send("home/aggregator/0", UPDATE, arrays=good, meta=meta)
        await client.send("home/aggregator/0", UPDATE, arrays=[g[:1] for g in good], meta=meta)
        await client.send("home/aggregator/0", UPDATE, arrays=good,
                          meta={**meta, "samples": -1})
        await client.send("home/aggregator/0", UPDATE, arrays=good, meta=meta)
        assert await asyncio.wait_for(run, 10) == 1
    assert agg.counters["refused"] == 3 and agg.counters["averaged"] == 1
    for t, g in zip(model.meta["tables"], good, strict=True):
        np.testing.assert_allclose(agg.params[t], wl.init_params()[t] + g)
