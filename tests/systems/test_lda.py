"""LDA through the real bus under every PS-shaped system: topics recovered, every replica
exactly the counts of the corpus's final assignments (nothing a filter held back is lost),
no negative count anywhere, and the averaging systems refuse it with the reason."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from geoml.bus import parse_topology
from geoml.systems import GaiaOptions, RunConfig, RunResult, problems, run_system
from geoml.systems.ps import assemble
from geoml.workloads import LDA, Params, make_workload

pytestmark = pytest.mark.asyncio


def _workload() -> LDA:
    w = make_workload("lda-synthetic", {"docs": 200, "doc_length": 60, "vocab": 200})
    assert isinstance(w, LDA)
    return w


def _topology() -> Any:
    return parse_topology({
        "name": "lda4", "defaults": {"workers": 1, "ps_shards": 1},
        "regions": [{"name": "a"}, {"name": "b", "lon": 10.0, "ps_shards": 2},
                    {"name": "c", "lon": 90.0}, {"name": "d", "lon": 100.0}],
        "overlay": [{"name": "west", "hub": "a", "members": ["a", "b"]},
                    {"name": "east", "hub": "d", "members": ["c", "d"]}]})


def _replicas(result: RunResult) -> dict[str, Params]:
    by_region: dict[str, list[Any]] = {}
    for shard in result.shards:
        by_region.setdefault(shard.ep.address.split("/")[0], []).append(shard)
    return {r: assemble(sh, sh[0].ranges) for r, sh in by_region.items()}


def _final_counts(w: LDA, result: RunResult) -> np.ndarray:
    """The word-topic counts of every worker's final assignments."""
    wt = np.zeros((w.vocab_size, w.topics), np.float32)
    for worker in result.workers:
        part = worker.part
        np.add.at(wt, (part.rows["word_topic"][part.data["w"]], part.data["z"]), 1)
    return wt


async def _run(system: str, w: LDA, clocks: int, **extra: Any) -> RunResult:
    return await asyncio.wait_for(run_system(RunConfig(
        _topology(), system, w, iterations=clocks, quiet=True, **extra)), 120)


@pytest.mark.parametrize("hubs", [False, True], ids=["all_to_all", "hubs"])
async def test_gaia_replicas_end_at_the_counts_of_the_final_assignments(hubs: bool) -> None:
    w = _workload()
    result = await _run("gaia", w, 8, gaia=GaiaOptions(v=0.3, hubs=hubs))
    expected = _final_counts(w, result)
    replicas = _replicas(result)
    assert set(replicas) == {"a", "b", "c", "d"}
    for region, params in replicas.items():
        np.testing.assert_array_equal(params["word_topic"], expected, err_msg=region)
        np.testing.assert_array_equal(params["topic_total"][0], expected.sum(0))
        assert params["word_topic"].min() >= 0
    assert 0.1 < result.summary["filtered_fraction"] < 1  # held back, and nothing lost
    assert expected.sum() == len(w.train_tokens)


async def test_lan_recovers_the_true_topics() -> None:
    w = _workload()
    result = await _run("lan", w, 25)
    assert w.topic_recovery(result.params) >= 0.9
    curve = [p["objective"] for p in result.curve]
    assert curve[-1] < 0.7 * curve[0]  # perplexity fell
    np.testing.assert_array_equal(result.params["word_topic"], _final_counts(w, result))


@pytest.mark.parametrize("system", ["baseline", "topk", "isolated", "centralized"])
async def test_every_other_ps_system_trains_it_and_keeps_counts_whole(system: str) -> None:
    w = _workload()
    result = await _run(system, w, 6)
    curve = [p["objective"] for p in result.curve]
    assert curve[-1] < curve[0]
    # isolated: a whole model per region; the others: one model (baseline's is sharded
    # over the regions)
    for params in (_replicas(result).values() if system == "isolated" else [result.params]):
        assert params["word_topic"].min() >= 0
        assert float(params["word_topic"].sum()) == float(params["topic_total"].sum())
    if system != "isolated":  # one model: exactly the final assignments' counts
        np.testing.assert_array_equal(result.params["word_topic"], _final_counts(w, result))


async def test_the_averaging_systems_refuse_count_updates_with_the_reason() -> None:
    cfg = RunConfig(_topology(), "fedavg", "lda-synthetic", iterations=2, quiet=True)
    found = problems(_topology(), cfg, ["fedavg", "diloco", "gaia"])
    assert set(found) == {"fedavg", "diloco"}
    assert "count deltas that must be summed" in found["fedavg"]
