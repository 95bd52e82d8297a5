"""A PS shard restarted from its checkpoint, through the real bus (inproc): its workers and
mirror replay what came after the checkpoint, and every replica ends exactly at the
initial model plus every update (none lost, none applied twice)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoml.bus import GeomlError, Network, parse_topology
from geoml.bus.frame import Message
from geoml.roles.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from geoml.roles.gaia import GaiaHub, GaiaMirror, GaiaShard
from geoml.roles.ps import PSShard, PSWorker
from geoml.roles.ps_plan import KeyRanges
from geoml.workloads import IntegerUpdates

CLOCKS = 12


class Crash(BaseException):
    """The shard process dies (not an error it could handle)."""


def _crashing(cls: type[PSShard], after_pushes: int) -> type[PSShard]:
    class Crashing(cls):  # type: ignore[valid-type, misc]
        async def _handle(self, msg: Message) -> None:
            await super()._handle(msg)
            if self.counters["pushes"] == after_pushes:
                raise Crash

    return Crashing


def _topology(regions: list[str]) -> Any:
    return parse_topology({"name": "recovery", "defaults": {"workers": 2, "ps_shards": 1},
                           "regions": [{"name": r, "lon": 10.0 * i}
                                       for i, r in enumerate(regions)]})


async def _restart(net: Network, crashed: PSShard, task: asyncio.Future[None],
                   make: Any) -> tuple[PSShard, asyncio.Future[None]]:
    """Wait for `crashed` to die, close its connection, start its successor from the
    checkpoint."""
    with pytest.raises(Crash):
        await asyncio.wait_for(task, 60)
    await crashed.ep.aclose()
    successor: PSShard = make(await net.connect(crashed.ep.address))
    assert successor.restore()
    return successor, asyncio.ensure_future(successor.run())


@pytest.mark.asyncio
@pytest.mark.parametrize("after_pushes", [1, 7, 15])
async def test_a_gaia_shard_restarted_from_its_checkpoint_loses_and_repeats_nothing(
        tmp_path: Path, after_pushes: int) -> None:
    wl = IntegerUpdates(10, 4)
    ranges = KeyRanges(wl.table_shapes(), 1)
    regions = ["a", "b"]
    mirrors = {r: f"{r}/mirror/0" for r in regions}
    workers = {r: [f"{r}/worker/{i}" for i in range(2)] for r in regions}
    parts = wl.partition({r: 2 for r in regions})
    ckpt = tmp_path / "a_ps_0.ckpt.npz"

    def shard(cls: type[PSShard], ep: Any, region: str, path: Path | None) -> PSShard:
        return cls(ep, 0, ranges, wl.init_params(), workers[region], mirrors[region],
                   v=0.5, ds=2, checkpoint=path)

    async with Network(_topology(regions)) as net:
        shards = {"a": shard(_crashing(GaiaShard, after_pushes),
                             await net.connect("a/ps/0"), "a", ckpt),
                  "b": shard(GaiaShard, await net.connect("b/ps/0"), "b", None)}
        tasks = {r: asyncio.ensure_future(s.run()) for r, s in shards.items()}
        mirror_roles = [GaiaMirror(await net.connect(mirrors[r]), r, [f"{r}/ps/0"], ranges,
                                   mirrors, ds=2, barrier="always") for r in regions]
        serving = [asyncio.ensure_future(m.run()) for m in mirror_roles]
        worker_roles = [PSWorker(await net.connect(w), wl, parts[(r, i)], [f"{r}/ps/0"],
                                 ranges, iterations=CLOCKS)
                        for r in regions for i, w in enumerate(workers[r])]
        working = [asyncio.ensure_future(w.run()) for w in worker_roles]
        shards["a"], tasks["a"] = await _restart(
            net, shards["a"], tasks["a"],
            lambda ep: shard(GaiaShard, ep, "a", ckpt))
        assert await asyncio.wait_for(asyncio.gather(*working), 60) == [CLOCKS] * 4
        await asyncio.wait_for(asyncio.gather(*tasks.values(), *serving), 60)
    expected = wl.expected({r: 2 for r in regions}, CLOCKS)
    for region, s in shards.items():
        np.testing.assert_array_equal(s.tables["W"], expected, err_msg=region)
    restarted = shards["a"]
    assert restarted.counters["restored"] == 1
    assert restarted.counters["pushes"] == CLOCKS * 2  # counted once each, replays included
    replayed = sum(w.counters["pushes_replayed"] for w in worker_roles)
    assert replayed >= after_pushes % 2  # a push beyond the checkpoint came again
    assert mirror_roles[0].counters["shard_restarts"] == 1
    # the filter's books survived too: every worker update of region a counted exactly
    # once (the checkpoint's count, plus the replayed pushes, none twice)
    updates = sum(int(np.count_nonzero(wl.delta("a", w, c)))
                  for w in range(2) for c in range(CLOCKS))
    assert restarted.filter.counters.updated == updates
    assert restarted.filter.counters.sent <= updates  # each sent element carries >= 1


def _crashing_at(cls: type[Any], after_frames: int, point: str) -> type[Any]:
    """A checkpointing mirror or hub (`cls`) that dies after handling `after_frames`
    frames: at "handled", before the checkpoint of what they changed; at "saved", after
    it but before the sends it holds."""

    class Crashing(cls):  # type: ignore[valid-type, misc]
        handled = 0

        async def _handle(self, msg: Message) -> None:
            await super()._handle(msg)
            self.handled += 1
            if point == "handled" and self.handled == after_frames:
                raise Crash

        def _save(self) -> None:
            super()._save()
            if point == "saved" and self.handled >= after_frames:
                raise Crash

    return Crashing


@pytest.mark.asyncio
@pytest.mark.parametrize(("point", "after_frames", "bits"), [
    ("handled", 4, 0), ("handled", 31, 0), ("saved", 12, 0), ("saved", 40, 0),
    ("handled", 31, 4), ("saved", 12, 4)])
async def test_a_mirror_restarted_from_its_checkpoint_loses_and_repeats_nothing(
        tmp_path: Path, point: str, after_frames: int, bits: int) -> None:
    """Three regions, every shard and mirror checkpointing; region a's mirror dies with
    updates on their way in and out. Its shards, its peers and it replay what was not
    acknowledged, and every replica ends at the initial model plus every update. With
    `bits` (topk with 4-bit codes) the residual the codes left comes back from the
    checkpoint too."""
    wl = IntegerUpdates(12, 4)
    ranges = KeyRanges(wl.table_shapes(), 2)
    regions = ["a", "b", "c"]
    mirrors = {r: f"{r}/mirror/0" for r in regions}
    shard_names = {r: [f"{r}/ps/{i}" for i in range(2)] for r in regions}
    workers = {r: [f"{r}/worker/{i}" for i in range(2)] for r in regions}
    parts = wl.partition({r: 2 for r in regions})

    def mirror(cls: type[GaiaMirror], ep: Any, r: str) -> GaiaMirror:
        return cls(ep, r, shard_names[r], ranges, mirrors, ds=2, barrier="always",
                   checkpoint=tmp_path / f"{r}_mirror.npz", bits=bits)

    topo = parse_topology({"name": "recovery", "defaults": {"workers": 2, "ps_shards": 2},
                           "regions": [{"name": r, "lon": 10.0 * i}
                                       for i, r in enumerate(regions)]})
    async with Network(topo) as net:
        shards = [GaiaShard(await net.connect(name), i, ranges, wl.init_params(), workers[r],
                            mirrors[r], v=0.5, ds=2, checkpoint=tmp_path / f"{r}_{i}.npz",
                            topk=0.2 if bits else None)
                  for r in regions for i, name in enumerate(shard_names[r])]
        serving = [asyncio.ensure_future(s.run()) for s in shards]
        mirror_roles = {r: mirror(_crashing_at(GaiaMirror, after_frames, point) if r == "a"
                                  else GaiaMirror, await net.connect(mirrors[r]), r)
                        for r in regions}
        mirror_tasks = {r: asyncio.ensure_future(m.run()) for r, m in mirror_roles.items()}
        working = [asyncio.ensure_future(
            PSWorker(await net.connect(w), wl, parts[(r, i)], shard_names[r], ranges,
                     iterations=CLOCKS).run())
            for r in regions for i, w in enumerate(workers[r])]
        with pytest.raises(Crash):
            await asyncio.wait_for(mirror_tasks["a"], 60)
        await mirror_roles["a"].ep.aclose()
        successor = mirror(GaiaMirror, await net.connect(mirrors["a"]), "a")
        assert successor.restore()
        mirror_tasks["a"] = asyncio.ensure_future(successor.run())
        assert await asyncio.wait_for(asyncio.gather(*working), 60) == [CLOCKS] * 6
        await asyncio.wait_for(asyncio.gather(*serving, *mirror_tasks.values()), 60)
    expected = wl.expected({r: 2 for r in regions}, CLOCKS)
    for r in regions:
        replica = np.concatenate([s.tables["W"] for s in shards
                                  if s.ep.address.startswith(f"{r}/")])
        np.testing.assert_array_equal(replica, expected, err_msg=r)
    assert successor.counters["restored"] == 1
    assert sum(mirror_roles[r].counters["peer_restarts"] for r in "bc") == 2
    assert not len(successor.sender.outbox)  # every update it sent was acknowledged
    assert all(s.counters["mirror_restarts"] == 1 for s in shards[:2])
    if bits:  # the codes left residuals, and the last updates carried them
        coders = [m.sender.coder for m in (successor, *(mirror_roles[r] for r in "bc"))]
        assert all(c is not None and c.pending_elements == 0 for c in coders)


@pytest.mark.asyncio
async def test_a_lan_shard_restarted_from_its_checkpoint_keeps_every_push(
        tmp_path: Path) -> None:
    """Two shards of one model, four workers; shard 1 dies between two checkpoints."""
    wl = IntegerUpdates(9, 3)
    ranges = KeyRanges(wl.table_shapes(), 2)
    names = [f"home/worker/{i}" for i in range(4)]
    parts = wl.partition({"home": 4})
    topo = parse_topology({"name": "one", "defaults": {"workers": 4, "ps_shards": 2},
                           "regions": [{"name": "home"}]})
    paths = [tmp_path / f"ps{i}.npz" for i in range(2)]

    def make(cls: type[PSShard], ep: Any, i: int) -> PSShard:
        return cls(ep, i, ranges, wl.init_params(), names, staleness=1, checkpoint=paths[i])

    async with Network(topo) as net:
        shards = [make(PSShard, await net.connect("home/ps/0"), 0),
                  make(_crashing(PSShard, 10), await net.connect("home/ps/1"), 1)]
        tasks = [asyncio.ensure_future(s.run()) for s in shards]
        workers = [PSWorker(await net.connect(n), wl, parts[("home", i)],
                            ["home/ps/0", "home/ps/1"], ranges, iterations=CLOCKS)
                   for i, n in enumerate(names)]
        working = [asyncio.ensure_future(w.run()) for w in workers]
        shards[1], tasks[1] = await _restart(net, shards[1], tasks[1],
                                             lambda ep: make(PSShard, ep, 1))
        assert await asyncio.wait_for(asyncio.gather(*working), 60) == [CLOCKS] * 4
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    model = np.concatenate([s.tables["W"] for s in shards])
    np.testing.assert_array_equal(model, wl.expected({"home": 4}, CLOCKS))
    assert shards[1].counters["pushes"] == CLOCKS * 4
    assert shards[0].counters["duplicate_pushes"] == 0
    assert all(not w.retained_clocks[0] or w.retained_clocks[0][0] >= CLOCKS - 2
               for w in workers)


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"clock": 1}, {"t": np.arange(3)})
    save_checkpoint(path, {"clock": 2}, {"t": np.arange(4)})
    meta, arrays = load_checkpoint(path)
    assert meta == {"clock": 2} and arrays["t"].tolist() == [0, 1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    np.savez(path, t=np.arange(2))
    with pytest.raises(CheckpointError, match="not a geoml checkpoint"):
        load_checkpoint(path)


@pytest.mark.asyncio
async def test_a_worker_that_dies_after_its_done_and_a_shard_that_dies_after_the_last_one(
        tmp_path: Path) -> None:
    """The ends of a run: a worker killed after its ps.done (before ps.bye) is restarted,
    learns that it had finished (ps.here says DONE) and only says done again; a shard
    restarted from a checkpoint where every worker had finished says ps.bye again."""
    from geoml.roles.ps import BYE, DONE

    wl = IntegerUpdates(6, 2)
    ranges = KeyRanges(wl.table_shapes(), 1)
    parts = wl.partition({"home": 2})
    names = ["home/worker/0", "home/worker/1"]
    topo = parse_topology({"name": "one", "defaults": {"workers": 2, "ps_shards": 1},
                           "regions": [{"name": "home"}]})
    path = tmp_path / "ps.npz"
    async with Network(topo) as net:
        shard = PSShard(await net.connect("home/ps/0"), 0, ranges, wl.init_params(), names,
                        staleness=10, checkpoint=path)
        serving = asyncio.ensure_future(shard.run())
        first = await net.connect(names[0])
        dying = PSWorker(first, wl, parts[("home", 0)], ["home/ps/0"], ranges)
        for _ in range(4):  # SSP(10): it runs ahead alone
            await asyncio.wait_for(dying.step(), 30)
        await first.send("home/ps/0", DONE)
        await first.aclose()  # dies before ps.bye
        successor = PSWorker(await net.connect(names[0]), wl, parts[("home", 0)],
                             ["home/ps/0"], ranges, iterations=4, resume=True)
        assert await asyncio.wait_for(successor.run(), 30) == 4
        assert successor.counters["resumed_at"] == 4
        other = PSWorker(await net.connect(names[1]), wl, parts[("home", 1)], ["home/ps/0"],
                         ranges, iterations=4)
        assert await asyncio.wait_for(other.run(), 30) == 4
        await asyncio.wait_for(serving, 30)
        assert shard.counters["pushes"] == 8
        np.testing.assert_array_equal(shard.tables["W"], wl.expected({"home": 2}, 4))
        # its last checkpoint has both workers done: a restart says bye to each, and ends
        await shard.ep.aclose()
        again = PSShard(await net.connect("home/ps/0"), 0, ranges, wl.init_params(), names,
                        checkpoint=path)
        assert again.restore()
        await asyncio.wait_for(again.run(), 10)
        np.testing.assert_array_equal(again.tables["W"], shard.tables["W"])
        for worker in (successor, other):
            assert (await asyncio.wait_for(worker.ep.recv(), 10)).type == BYE


@pytest.mark.asyncio
async def test_a_restarted_mirror_whose_shard_left_unheard_stops_with_the_reason(
        tmp_path: Path) -> None:
    """The one window left: the mirror got a shard's gaia.stopped, the shard exited, and
    the mirror died before its next checkpoint. Restarted, it must not wait forever."""
    ranges = KeyRanges({"W": (4, 2)}, 1)
    topo = parse_topology({"name": "one", "defaults": {"workers": 1, "ps_shards": 1},
                           "regions": [{"name": "a"}]})
    ckpt = tmp_path / "mirror.npz"
    async with Network(topo, unreachable_timeout_s=0.3) as net:
        ep = await net.connect("a/mirror/0")
        before = GaiaMirror(ep, "a", ["a/ps/0"], ranges, {"a": "a/mirror/0"}, checkpoint=ckpt)
        before._forwarded, before._forwarded_final = 3, True
        before._durable_shards, before._stop_sent = {"a/ps/0"}, True
        before._save()
        await ep.aclose()
        mirror = GaiaMirror(await net.connect("a/mirror/0"), "a", ["a/ps/0"], ranges,
                            {"a": "a/mirror/0"}, checkpoint=ckpt)
        assert mirror.restore()
        with pytest.raises(GeomlError, match=r"a/ps/0 is gone without saying gaia\.stopped"):
            await asyncio.wait_for(mirror.run(), 30)


@pytest.mark.asyncio
@pytest.mark.parametrize(("point", "after_frames", "bits"), [
    ("handled", 3, 0), ("handled", 4, 0), ("handled", 20, 0), ("handled", 21, 0),
    ("saved", 9, 0), ("saved", 30, 0), ("handled", 20, 4)])
async def test_a_hub_restarted_from_its_checkpoint_loses_and_repeats_nothing(
        tmp_path: Path, point: str, after_frames: int, bits: int) -> None:
    """Four regions in two overlay groups, every shard, mirror and hub checkpointing; the
    hub of group west (a, b) dies with member updates waiting to be combined and combined
    ones unacknowledged. Its successor loads its checkpoint, its members and the other hub
    resend what it had not acknowledged, and every replica ends at the initial model plus
    every update (with 4-bit codes too: the hub's residual is in its checkpoint)."""
    wl = IntegerUpdates(12, 4)
    ranges = KeyRanges(wl.table_shapes(), 1)
    regions = ["a", "b", "c", "d"]
    groups = {"west": ("a/hub/0", ["a", "b"]), "east": ("d/hub/0", ["c", "d"])}
    hub_of = {r: h for h, members in groups.values() for r in members}
    mirrors = {r: f"{r}/mirror/0" for r in regions}
    shard_names = {r: [f"{r}/ps/0"] for r in regions}
    workers = {r: [f"{r}/worker/0"] for r in regions}
    parts = wl.partition({r: 1 for r in regions})

    def hub(cls: type[GaiaHub], ep: Any, group: str) -> GaiaHub:
        _, members = groups[group]
        return cls(ep, {r: mirrors[r] for r in members}, {g: h for g, (h, _) in groups.items()},
                   wl.table_shapes(), [r for r in regions if r not in members],
                   barrier="always", checkpoint=tmp_path / f"{group}_hub.npz", bits=bits)

    topo = parse_topology({"name": "hubs", "defaults": {"workers": 1, "ps_shards": 1},
                           "regions": [{"name": r, "lon": 10.0 * i}
                                       for i, r in enumerate(regions)]})
    async with Network(topo) as net:
        shards = [GaiaShard(await net.connect(shard_names[r][0]), 0, ranges, wl.init_params(),
                            workers[r], mirrors[r], v=0.5, ds=2,
                            checkpoint=tmp_path / f"{r}_0.npz", topk=0.2 if bits else None)
                  for r in regions]
        serving = [asyncio.ensure_future(s.run()) for s in shards]
        mirror_tasks = [asyncio.ensure_future(GaiaMirror(
            await net.connect(mirrors[r]), r, shard_names[r], ranges, mirrors, ds=2,
            hub=hub_of[r], barrier="always", checkpoint=tmp_path / f"{r}_mirror.npz",
            bits=bits).run()) for r in regions]
        hubs = {"west": hub(_crashing_at(GaiaHub, after_frames, point),
                            await net.connect("a/hub/0"), "west"),
                "east": hub(GaiaHub, await net.connect("d/hub/0"), "east")}
        hub_tasks = {g: asyncio.ensure_future(h.run()) for g, h in hubs.items()}
        working = [asyncio.ensure_future(
            PSWorker(await net.connect(workers[r][0]), wl, parts[(r, 0)], shard_names[r],
                     ranges, iterations=CLOCKS).run()) for r in regions]
        with pytest.raises(Crash):
            await asyncio.wait_for(hub_tasks["west"], 60)
        await hubs["west"].ep.aclose()
        successor = hub(GaiaHub, await net.connect("a/hub/0"), "west")
        assert successor.restore()
        hub_tasks["west"] = asyncio.ensure_future(successor.run())
        assert await asyncio.wait_for(asyncio.gather(*working), 60) == [CLOCKS] * 4
        await asyncio.wait_for(asyncio.gather(*serving, *mirror_tasks, *hub_tasks.values()),
                               60)
    expected = wl.expected({r: 1 for r in regions}, CLOCKS)
    for shard in shards:
        np.testing.assert_array_equal(shard.tables["W"], expected, err_msg=shard.ep.address)
    assert successor.counters["restored"] == 1
    assert hubs["east"].counters["peer_restarts"] == 1
    assert not len(successor.sender.outbox)  # every update it sent was acknowledged
    if bits:
        assert successor.sender.coder is not None
        assert successor.sender.coder.pending_elements == 0
