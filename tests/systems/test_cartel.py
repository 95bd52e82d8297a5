"""Cartel through the real bus: metadata service, peers, transfers, the baselines, the CLI."""

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from geoml.bus import Network, parse_topology
from geoml.bus.vclock import run_virtual
from geoml.cartel import CartelRunConfig, compare_async, place
from geoml.roles.cartel import PULL, ROWS, CartelConfig, CartelPeer
from geoml.roles.metadata import LOOKUP, NEIGHBOURS, REPORT, MetadataService, MetadataTable
from geoml.roles.stream_site import StreamConfig
from geoml.systems.edge import run_edge_system as run_system
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import ScenarioConfig, make_streams, synthetic_pools

from ..conftest import wait_until


def star(sites: int = 4):
    return parse_topology({
        "name": "star", "routing": "star", "hub": "cloud",
        "defaults": {"wan_rate_mbps": 50.0, "workers": 0, "ps_shards": 0},
        "regions": [{"name": "cloud", "lat": 38.9, "lon": -77.5}]
        + [{"name": f"e{i}", "lat": 39.0 + i, "lon": -80.0} for i in range(sites)],
    })


FAST = StreamConfig(rate=4000.0, batch=10, lr=0.1)


def scenario(sites: int = 4) -> ScenarioConfig:
    return ScenarioConfig(sites=sites, pre_drift=400, post_drift=400, seed=1)


def test_star_routing_sends_site_to_site_traffic_through_the_hub():
    topo = star(3)
    assert topo.route("e0", "e1") == ["e0", "cloud", "e1"]
    assert topo.route("e0", "cloud") == ["e0", "cloud"]
    assert topo.neighbours("e2") == ["cloud"]
    with pytest.raises(Exception, match="routing = 'star' needs hub"):
        parse_topology({"routing": "star", "regions": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(Exception, match="hub = 'x': unknown region"):
        parse_topology({"routing": "star", "hub": "x", "regions": [{"name": "a"}]})


@pytest.mark.asyncio
async def test_a_drifted_peer_pulls_its_new_class_from_a_neighbour_that_knows_it():
    pools = synthetic_pools()
    topo = star(4)
    streams = make_streams(pools, scenario())
    cfg = CartelRunConfig(topology=topo, data="synthetic", stream=FAST, quiet=True)
    cloud, edges = place(topo, None, None)
    run = await asyncio.wait_for(run_system("cartel", cfg, topo, pools, streams, cloud, edges),
                                 60)
    sites = run.details["sites"]
    for s in streams:
        if s.new_class is None:
            continue
        address = f"{edges[s.site]}/peer/0"
        drift_transfers = [t for t in sites[address]["transfers"]
                           if t["at_record"] > s.drift_at]
        assert drift_transfers, address
        t = drift_transfers[0]
        assert t["outcome"] == "merged" and s.new_class in t["need"]
        teacher = edges.index(t["neighbours"][0].split("/")[0])
        assert s.new_class in streams[teacher].classes_before
        assert s.new_class in sites[address]["classes"] and t["bytes_in"] > 0
    assert run.wan_bytes > 0 and run.raw_wan_frames == 0
    assert run.details["metadata"]["reports"] >= len(streams)
    for site in sites.values():  # every peer reported once its window was full, no earlier
        assert site["counters"]["reports_first"] == 1
    global_bytes = pools.n_classes * (pools.feature_dim + 1) * 4
    assert all(b < global_bytes for b in run.model_bytes.values())  # small local models


def _never_adapting_accuracy(pools, stream) -> float:
    """Held-out accuracy of the site's model had it stopped learning at the drift."""
    model = OnlineSoftmax(pools.feature_dim, lr=FAST.lr, l2=FAST.l2)
    x = pools.encoder(stream.raw[:stream.drift_at])
    for i in range(0, stream.drift_at, FAST.batch):
        model.learn(x[i:i + FAST.batch], stream.label[i:i + FAST.batch])
    return float((model.predict(pools.encoder(stream.held_out_raw))
                  == stream.held_out_label).mean())


def test_the_baselines_run_on_the_same_streams():
    """Virtual time (deterministic). Each system's held-out accuracy is judged against two
    references the test computes itself: always predicting a site's majority class, and
    the site's own model frozen at the drift point (it never sees the new class)."""
    pools = synthetic_pools()
    topo = star(3)
    streams = make_streams(pools, scenario(3))
    cfg = CartelRunConfig(topology=topo, data="synthetic", stream=FAST, quiet=True,
                          fed_round_batches=10)
    cloud, edges = place(topo, None, None)
    runs = {system: run_virtual(run_system(system, cfg, topo, pools, streams, cloud, edges))
            for system in ("isolated", "centralized", "fedavg")}
    assert runs["isolated"].wan_bytes == 0
    central = runs["centralized"]
    batches = sum(-(-len(s) // FAST.batch) for s in streams)
    assert central.raw_wan_frames == batches and central.details["records_scored"] == sum(
        len(s) for s in streams)
    assert central.details["refused"] == 0
    fed = runs["fedavg"]
    assert fed.details["rounds"] >= 2 and fed.details["aggregator"].get("refused", 0) == 0
    assert fed.raw_wan_frames == 0 and fed.wan_bytes > 0
    majority = np.mean([np.bincount(s.held_out_label).max() / len(s.held_out_label)
                        for s in streams])
    drifted = [s for s in streams if s.new_class is not None]
    assert drifted
    frozen = {s.site: _never_adapting_accuracy(pools, s) for s in drifted}
    for system, run in runs.items():
        assert np.mean(list(run.held_out_accuracy.values())) > majority + 0.2, system
        for s in drifted:  # learning the new class is worth at least 5 points here
            assert run.held_out_accuracy[s.site] > frozen[s.site] + 0.05, (system, s.site)


@pytest.mark.asyncio
async def test_a_peer_serves_exactly_its_rows_and_refuses_bad_frames():
    pools = synthetic_pools()
    stream = make_streams(pools, scenario(2))[0]
    async with Network(star(2)) as net:
        peer = CartelPeer(await net.connect("e0/peer/0"), stream, pools.encoder,
                          pools.n_classes, pools.feature_dim, FAST, CartelConfig(),
                          "cloud/metadata/0")
        x = pools.encoder(stream.raw[:200])
        for i in range(0, 200, 10):
            peer.model.learn(x[i:i + 10], stream.label[i:i + 10])
        stop = asyncio.Event()
        serving = asyncio.ensure_future(peer.serve(stop))
        asker = await net.connect("e1/peer/0")
        learned = sorted(set(stream.label[:200].tolist()))
        assert len(learned) >= 3
        wanted = [*learned[1:], 99]  # not the model's first rows, and one it lacks
        await asker.send("e0/peer/0", PULL, meta={"id": 7, "classes": wanted})
        reply = await asker.recv(timeout=5)
        held = learned[1:]
        assert reply.type == ROWS and reply.meta == {"id": 7, "classes": held}
        # the sample counts behind each row are those classes' labels among what it learned
        np.testing.assert_array_equal(
            reply.arrays[2], [int((stream.label[:200] == c).sum()) for c in held])
        # the rows are those classes' rows: a model made of them alone scores those classes
        # exactly as the peer's model does, relative to each other
        copy = OnlineSoftmax(pools.feature_dim)
        copy.merge(held, reply.arrays[0], reply.arrays[1], reply.arrays[2])
        own = x @ peer.model.weights.T + peer.model.bias
        theirs = x @ copy.weights.T + copy.bias
        columns = [peer.model.classes.index(c) for c in held]
        np.testing.assert_allclose(theirs, own[:, columns], rtol=1e-5, atol=1e-5)
        await asker.send("e0/peer/0", PULL, meta={"classes": [1]})  # no id
        await asker.send("e0/peer/0", "cartel.bogus", meta={})
        await asker.send("e0/peer/0", ROWS, meta={"id": 123, "classes": []})  # unasked
        await asker.send("e0/peer/0", PULL, meta={"id": 8, "classes": [held[0]]})
        assert (await asker.recv(timeout=5)).meta["id"] == 8  # still serving
        assert peer.counters["refused"] == 2 and peer.counters["late_replies"] == 1
        stop.set()
        await asyncio.wait_for(serving, 5)


@pytest.mark.asyncio
async def test_metadata_service_answers_lookups_and_counts_bad_frames():
    async with Network(star(3)) as net:
        service = MetadataService(await net.connect("cloud/metadata/0"), MetadataTable(3))
        stop = asyncio.Event()
        task = asyncio.ensure_future(service.run(stop))
        a = await net.connect("e0/peer/0")
        b = await net.connect("e1/peer/0")
        await a.send("cloud/metadata/0", REPORT, arrays=[np.zeros(2, np.float16)], meta={
            "classes": [0, 2], "counts": [50, 0, 40], "recent": [10, 0, 10], "samples": 90,
            "version": 3, "model_bytes": 24})
        # a's report and b's lookup come from two senders: either may arrive first
        await wait_until(lambda: service.counters["reports"] == 1, 5)
        await b.send("cloud/metadata/0", REPORT, meta={"classes": [7], "counts": [1, 2, 3],
                                                       "recent": [1, 2, 3], "samples": 6,
                                                       "version": 1, "model_bytes": 1})
        await b.send("cloud/metadata/0", LOOKUP, meta={"id": 1, "need": [2],
                                                       "priors": [1, 0]})  # wrong length
        await b.send("cloud/metadata/0", LOOKUP, meta={"id": 2, "need": [2],
                                                       "priors": [5, 0, 5], "k": 3})
        answer = await b.recv(timeout=5)
        assert answer.type == NEIGHBOURS and answer.meta["id"] == 2
        assert answer.meta["neighbours"] == [["e0/peer/0", 0.0, [2], [0, 2]]]
        assert service.counters["refused"] == 2 and service.counters["reports"] == 1
        # a second peer that knows class 2 too, with priors unlike the asker's
        c = await net.connect("e2/peer/0")
        await c.send("cloud/metadata/0", REPORT, arrays=[np.zeros(2, np.float16)], meta={
            "classes": [1, 2], "counts": [0, 45, 45], "recent": [0, 9, 1], "samples": 90,
            "version": 1, "model_bytes": 24})
        await wait_until(lambda: service.counters["reports"] == 2)  # frames of two senders
        await b.send("cloud/metadata/0", LOOKUP, meta={"id": 3, "need": [2],
                                                       "priors": [5, 0, 5], "k": 3})
        ranked = (await b.recv(timeout=5)).meta["neighbours"]
        # JS divergence (base 2) of [.5, 0, .5] and [0, .9, .1], by hand: m = [.25, .45, .3]
        p, q, m = np.array([.5, .5]), np.array([.9, .1]), np.array([.25, .45, .3])
        js = (float((p * np.log2(p / m[[0, 2]])).sum())
              + float((q * np.log2(q / m[[1, 2]])).sum())) / 2
        assert [n[0] for n in ranked] == ["e0/peer/0", "e2/peer/0"]  # most alike first
        assert ranked[1][1] == pytest.approx(js)
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_a_report_without_features_keeps_the_last_ones_and_its_heartbeat_counts():
    async with Network(star(2)) as net:
        table = MetadataTable(3, stale_after_s=1.0, min_class_samples=1)
        service = MetadataService(await net.connect("cloud/metadata/0"), table)
        stop = asyncio.Event()
        task = asyncio.ensure_future(service.run(stop))
        a = await net.connect("e0/peer/0")
        b = await net.connect("e1/peer/0")
        meta = {"classes": [0, 2], "counts": [50, 0, 40], "recent": [10, 0, 10],
                "samples": 90, "version": 3, "model_bytes": 24, "next_within_s": 30.0}
        await a.send("cloud/metadata/0", REPORT, arrays=[np.ones(2, np.float16)], meta=meta)
        await a.send("cloud/metadata/0", REPORT, meta={**meta, "version": 4})
        await a.send("cloud/metadata/0", REPORT, meta={**meta, "next_within_s": "soon"})
        await b.send("cloud/metadata/0", LOOKUP, meta={"id": 1, "need": [2],
                                                       "priors": [5, 0, 5], "k": 1})
        answer = await b.recv(timeout=5)
        assert [n[0] for n in answer.meta["neighbours"]] == ["e0/peer/0"]
        record = table.peers["e0/peer/0"]
        assert record.version == 4 and record.next_within_s == 30.0
        assert record.feature_mean.tolist() == [1.0, 1.0]
        assert service.counters["reports"] == 2 and service.counters["refused"] == 1
        # silent for longer than stale_after_s, but within twice its announced heartbeat
        assert not table.is_stale(record, record.reported_at + 59.0)
        assert table.is_stale(record, record.reported_at + 61.0)
        stop.set()
        await asyncio.wait_for(task, 5)


def test_a_dead_neighbour_costs_a_timeout_not_the_stream():
    """Virtual time: the metadata service names a neighbour that never answers; the pull
    times out after exactly its 0.5 s, and the stream goes on to its end."""
    from geoml.roles.metadata import PeerRecord

    pools = synthetic_pools()
    streams = make_streams(pools, scenario(2))
    drifted = next(s for s in streams if s.new_class is not None)

    async def main() -> CartelPeer:
        async with Network(star(2), unreachable_timeout_s=0.5) as net:
            table = MetadataTable(pools.n_classes, min_class_samples=1)
            service = MetadataService(await net.connect("cloud/metadata/0"), table)
            counts = np.full(pools.n_classes, 100)
            loop = asyncio.get_running_loop()
            table.report(PeerRecord("e1/peer/0", counts, counts, 1000, 1, 1,
                                    frozenset(range(pools.n_classes)), np.zeros(1), 1e12))
            table.peers["e1/peer/0"].reported_at = loop.time() + 1e6  # never stale
            peer = CartelPeer(await net.connect("e0/peer/0"), drifted, pools.encoder,
                              pools.n_classes, pools.feature_dim, FAST,
                              CartelConfig(pull_timeout_s=0.5), "cloud/metadata/0")
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(service.run(stop)),
                     asyncio.ensure_future(peer.serve(stop))]
            await peer.run_stream(loop.time())
            await peer.wait_transfers(5)
            stop.set()
            await asyncio.gather(*tasks)
            return peer

    peer = run_virtual(main())
    assert peer.position == len(drifted)
    assert peer.counters["pull_timeouts"] >= 1
    stuck = [t for t in peer.summary()["transfers"] if t["outcome"] == "nothing_merged"]
    assert stuck and all(t["neighbours"] == ["e1/peer/0"] for t in stuck)
    # at 4000 records/s, a 0.5 s timeout is 2000 records of stream at most
    assert all(0 < t["done_at_record"] - t["at_record"] <= 2000 + FAST.batch for t in stuck)


def _prequential_after_drift(pools, stream) -> float:
    """An isolated site by hand: predict each batch of 10, then learn it; the share of
    post-drift records it got right."""
    model = OnlineSoftmax(pools.feature_dim, lr=FAST.lr, l2=FAST.l2)
    x = pools.encoder(stream.raw)
    hits = []
    for i in range(0, len(stream), FAST.batch):
        hits += list(model.predict(x[i:i + FAST.batch]) == stream.label[i:i + FAST.batch])
        model.learn(x[i:i + FAST.batch], stream.label[i:i + FAST.batch])
    return float(np.mean(hits[stream.drift_at:]))


def test_cli_writes_cartel_json_and_plots(tmp_path):
    """The figures of cartel.json against what the test works out from the same streams:
    model sizes from the classes each site saw, centralized's raw records, training time
    at 0.1 ms per example, and isolated's accuracy by a prequential loop of its own."""
    out = tmp_path / "c"
    proc = subprocess.run(
        [sys.executable, "-m", "geoml.cli", "cartel", "--data", "synthetic", "--peers", "4",
         "--pre-drift", "200", "--post-drift", "200", "--rate", "4000",
         "--compute", "example:1e-4", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "cartel.json").read_text())
    assert set(result["systems"]) == {"cartel", "isolated", "centralized", "fedavg"}
    systems = result["systems"]
    pools = synthetic_pools()
    streams = make_streams(pools, ScenarioConfig(sites=4, pre_drift=200, post_drift=200))
    row = (pools.feature_dim + 1) * 4  # one class: its weights and bias, float32
    assert result["global_model_bytes"] == pools.n_classes * row
    seen = [len(set(s.label.tolist())) for s in streams]
    assert systems["isolated"]["mean_model_bytes"] == pytest.approx(np.mean(seen) * row)
    assert 1 < result["model_size_vs_global"] == pytest.approx(
        result["global_model_bytes"] / systems["cartel"]["mean_model_bytes"])
    # centralized ships every record raw, one frame per batch of 10
    central = systems["centralized"]
    assert central["raw_wan_frames"] == sum(-(-len(s) // 10) for s in streams) == 160
    assert central["wan_bytes"] > sum(s.raw.nbytes for s in streams)
    assert result["bytes_vs_centralized"] == pytest.approx(
        central["wan_bytes"] / systems["cartel"]["wan_bytes"])
    assert systems["cartel"]["raw_wan_frames"] == 0
    # training time: the cloud learns all 1600 records, a site at least its own 400
    assert central["train_compute_s"] == pytest.approx(1600 * 1e-4)
    assert systems["isolated"]["train_compute_s"] == pytest.approx(400 * 1e-4)
    assert 400 * 1e-4 <= systems["cartel"]["train_compute_s"] < 1.1 * 400 * 1e-4
    assert result["train_time_vs_centralized"] == pytest.approx(
        central["train_compute_s"] / systems["cartel"]["train_compute_s"])
    assert systems["isolated"]["accuracy_after_drift"] == pytest.approx(
        np.mean([_prequential_after_drift(pools, s) for s in streams]), abs=1e-12)
    for name, figures in systems.items():
        assert result["accuracy_after_drift"][name] == figures["accuracy_after_drift"]
        for site, records in figures["adaptation_records"].items():  # within the stream
            assert records is None or 0 <= records <= 200, (name, site)
    assert result["adapt_speedup_vs_isolated"] == pytest.approx(
        systems["isolated"]["mean_adaptation_records"]
        / systems["cartel"]["mean_adaptation_records"])
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "bytes.png").exists()
    assert "[cartel] fedavg" in proc.stderr  # progress lines


@pytest.mark.parametrize("args, message", [
    (["--peers", "1"], "--peers 1: topology 'edge' has 20 edge regions"),
    (["--systems", "cartel,gaia"], "unknown or no systems ['gaia']"),
    (["--topology", "nope.toml"], "nope.toml"),
    (["--cloud", "mars"], "cloud region 'mars' is not in topology 'edge'"),
])
def test_cli_refuses_bad_settings_with_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "geoml.cli", "cartel", "--out",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_async_without_the_out_dir_returns_the_figures():
    cfg = CartelRunConfig(topology=star(3), data="synthetic", stream=FAST, quiet=True,
                          systems=["cartel", "isolated"], scenario=scenario())
    result = asyncio.run(asyncio.wait_for(compare_async(cfg), 60))
    assert result["sites"] == 3 and result["bytes_vs_centralized"] is None
    assert result["systems"]["isolated"]["wan_bytes"] == 0


def _without_wall_time(result: dict) -> dict:
    assert result.pop("clock") == "virtual" and result.pop("total_wall_s") > 0
    for figures in result["systems"].values():
        assert figures.pop("wall_s") > 0
    return result


def test_virtual_cartel_runs_with_a_price_per_example_are_identical(tmp_path):
    from geoml.cli import main

    args = ["cartel", "--data", "synthetic", "--peers", "4", "--pre-drift", "300",
            "--post-drift", "300", "--clock", "virtual", "--compute", "example:1e-4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (_without_wall_time(json.loads((tmp_path / d / "cartel.json").read_text()))
            for d in "ab")
    assert a == b
    # an isolated site learns its 600 records and nothing else, at 0.1 ms each
    assert a["systems"]["isolated"]["train_compute_s"] == pytest.approx(600 * 1e-4)
    assert a["stream"]["compute"] == {"per_example_s": 1e-4}


@pytest.mark.parametrize("fanout", [1, 2])
def test_fanout_is_how_many_neighbours_a_transfer_pulls_from(fanout):
    """Virtual time, four sites: site 2's new class is known at two others, so a fanout of
    2 pulls from both and a fanout of 1 from the closest one only."""
    pools = synthetic_pools()
    topo = star(4)
    streams = make_streams(pools, scenario(4))
    cfg = CartelRunConfig(topology=topo, data="synthetic", stream=FAST, quiet=True,
                          cartel=CartelConfig(fanout=fanout))
    cloud, edges = place(topo, None, None)
    run = run_virtual(run_system("cartel", cfg, topo, pools, streams, cloud, edges))
    transfers = [t for site in run.details["sites"].values() for t in site["transfers"]]
    assert transfers and all(len(t["neighbours"]) <= fanout for t in transfers)
    assert max(len(t["neighbours"]) for t in transfers) == fanout
    for t in transfers:  # every neighbour pulled from had learned a class the asker needed
        for address in t["neighbours"]:
            teacher = streams[edges.index(address.split("/")[0])]
            assert set(t["need"]) & set(teacher.classes_before), (address, t)


@pytest.mark.asyncio
async def test_a_known_class_with_low_recall_is_asked_for_like_a_missing_one():
    """README: a peer asks for the classes it lacks *or gets wrong* (recall below 80% over
    its last window). Classes 1 and 2 are both learned; over the recent window the model
    got class 1 right 7 times in 10 and class 2 9 times in 10, and has never seen 3."""
    pools = synthetic_pools()
    stream = make_streams(pools, scenario(2))[0]
    async with Network(star(2)) as net:
        peer = CartelPeer(await net.connect("e0/peer/0"), stream, pools.encoder,
                          pools.n_classes, pools.feature_dim, FAST,
                          CartelConfig(min_class_samples=5), "cloud/metadata/0")
        x = np.zeros((30, pools.feature_dim), np.float32)
        peer.model.learn(x, np.repeat([0, 1, 2], 10))  # 10 samples behind each row
        recent = [(0, True)] * 10 + [(1, i < 7) for i in range(10)] \
            + [(2, i < 9) for i in range(10)] + [(3, False)] * 5
        for label, hit in recent:
            peer.recent_labels.append(label)
            peer.recent_hits.append(hit)
        assert peer.needed_classes() == [1, 3]
