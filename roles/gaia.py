"""Gaia's roles: a region's PS shard with a significance filter, and the region's mirror.

Frames (docs/PROTOCOL.md, "Gaia"); element indices are flat indices into a table's
global array (row * columns + column); updates use the compact form of `sparse_codec`
(meta {tables, enc}, per table an index part and `<f4` values):
  gaia.update  shard -> own mirror, and mirror -> other regions' mirrors. Data priority.
               meta {clock, final, tables, enc}. `clock`: the sender's local clocks
               completed; `final`: its last update (after a flush).
  gaia.apply   mirror -> own shard: add these remote updates. meta {tables, enc}.
  gaia.allow   mirror -> own shard, control: meta {clock}: reads beyond this clock wait
               (the mirror clock: slowest other region + DS).
  gaia.stop    mirror -> own shard, data (after every apply): every region has finished.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.workloads import Params

from .ps import PSShard
from .ps_plan import KeyRanges
from .significance import MirrorClock, SignificanceFilter
from .sparse_codec import decode, encode

log = logging.getLogger("geoml.roles.gaia")

UPDATE, APPLY, ALLOW, STOP = "gaia.update", "gaia.apply", "gaia.allow", "gaia.stop"


class GaiaShard(PSShard):
    """A PS shard of one region's replica; filters its workers' updates for the WAN."""

    def __init__(self, endpoint: Endpoint, index: int, ranges: KeyRanges, init: Params,
                 workers: Sequence[str], mirror: str, *, v: float = 0.01,
                 absolute: float | None = None, ds: int = 2, **kw: Any) -> None:
        super().__init__(endpoint, index, ranges, init, workers, **kw)
        self.mirror = mirror
        self.filter = SignificanceFilter({t: a.shape for t, a in self.tables.items()}, v=v,
                                         absolute=absolute)
        self.gate.limit = ds
        self._stopped = False
        self._sent_final = False
        self.cols = {t: ranges.shapes[t][1] for t in ranges.shapes}

    def _finished(self) -> bool:
        return self._stopped

    def _applied(self, table: str, rows: np.ndarray | None, delta: np.ndarray) -> None:
        self.filter.add(table, rows, delta)

    def _to_global(self, table: str, idx: np.ndarray) -> np.ndarray:
        return idx + self.lo[table] * self.cols[table]

    async def _send_update(self, clock: int, update: dict[str, tuple[np.ndarray, np.ndarray]],
                           final: bool) -> None:
        meta, arrays = encode({t: (self._to_global(t, idx), vals)
                               for t, (idx, vals) in update.items()})
        await self.ep.send(self.mirror, UPDATE, arrays=arrays,
                           meta={"clock": clock, "final": final, **meta})

    async def _clock_advanced(self, before: int, after: int) -> None:
        if self.gate.all_done:
            if not self._sent_final:
                self._sent_final = True
                await self._send_update(before, self.filter.flush(), final=True)
            return
        for clock in range(before + 1, after + 1):
            await self._send_update(clock, self.filter.select(self.tables, clock), final=False)

    async def _handle_other(self, msg: Message) -> list[Any]:
        if msg.src != self.mirror:
            raise ValueError(f"{msg.type} is only accepted from this region's mirror")
        if msg.type == APPLY:
            for table, (idx, vals) in decode(msg.meta, msg.arrays).items():
                if table not in self.tables:
                    raise KeyError(f"unknown table {table!r}")
                flat = self.tables[table].reshape(-1)
                local = idx - self.lo[table] * self.cols[table]
                if len(local) and (local.min() < 0 or local.max() >= flat.size):
                    raise IndexError(f"gaia.apply: indices of {table} outside this shard")
                np.add.at(flat, local, vals)
            self.counters["applies"] += 1
            return []
        if msg.type == ALLOW:
            return self.gate.set_limit(int(msg.meta["clock"]))
        if msg.type == STOP:
            self._stopped = True
            return []
        raise ValueError(f"a Gaia shard does not take {msg.type!r} frames")


class GaiaMirror:
    """A region's mirror: ships significant updates between regions, runs the mirror clock.

    `run()` returns when every region (this one included) has sent its final update and
    this region's shards have been told to stop.
    """

    def __init__(self, endpoint: Endpoint, region: str, shards: Sequence[str],
                 ranges: KeyRanges, mirrors: dict[str, str], *, ds: int = 2) -> None:
        self.ep = endpoint
        self.region = region
        self.shards = list(shards)
        self.ranges = ranges
        self.mirrors = {r: a for r, a in mirrors.items() if r != region}
        self.clock = MirrorClock(self.mirrors, ds)
        self.allowed = ds
        self.counters: Counter[str] = Counter()
        self._pending: dict[int, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        self._reported: dict[int, set[str]] = {}
        self._final_shards: set[str] = set()
        self._final_regions: set[str] = set()

    async def run(self) -> None:
        """Serve until all regions are final."""
        while not (len(self._final_shards) == len(self.shards)
                   and self._final_regions == set(self.mirrors)):
            msg = await self.ep.recv()
            try:
                await self._handle(msg)
            except (ValueError, KeyError, IndexError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src,
                            exc)
        for shard in self.shards:
            await self.ep.send(shard, STOP)

    async def _handle(self, msg: Message) -> None:
        if msg.type != UPDATE:
            raise ValueError(f"a mirror does not take {msg.type!r} frames")
        if msg.src in self.shards:
            await self._local(msg)
        elif msg.src in self.mirrors.values():
            await self._remote(msg)
        else:
            raise ValueError(f"gaia.update from {msg.src}, which is neither a shard of "
                             f"{self.region} nor a mirror")

    async def _local(self, msg: Message) -> None:
        clock, final = int(msg.meta["clock"]), bool(msg.meta["final"])
        update = decode(msg.meta, msg.arrays)
        key = -1 if final else clock
        bucket = self._pending.setdefault(key, {})
        for t, pair in update.items():
            bucket.setdefault(t, []).append(pair)
        reported = self._reported.setdefault(key, set())
        reported.add(msg.src)
        if final:
            self._final_shards.add(msg.src)
        if len(reported) < len(self.shards):
            return
        del self._reported[key]
        merged = {t: (np.concatenate([i for i, _ in pairs]), np.concatenate([v for _, v in pairs]))
                  for t, pairs in self._pending.pop(key).items()}
        self.counters["elements_sent"] += sum(len(i) for i, _ in merged.values())
        meta, arrays = encode(merged)
        for mirror in self.mirrors.values():
            await self.ep.send(mirror, UPDATE, arrays=arrays,
                               meta={"clock": clock, "final": final, **meta})

    async def _remote(self, msg: Message) -> None:
        region = msg.src.split("/")[0]
        update = decode(msg.meta, msg.arrays)
        per_shard: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in self.shards]
        for table, (idx, vals) in update.items():
            if table not in self.ranges.shapes:
                raise KeyError(f"unknown table {table!r} from {msg.src}")
            cols = self.ranges.shapes[table][1]
            order = np.argsort(idx, kind="stable")
            idx, vals = idx[order], vals[order]
            cuts = np.searchsorted(idx, self.ranges.bounds[table] * cols)
            for s in range(len(self.shards)):
                if cuts[s + 1] > cuts[s]:
                    per_shard[s][table] = (idx[cuts[s]:cuts[s + 1]], vals[cuts[s]:cuts[s + 1]])
        for shard, part in zip(self.shards, per_shard, strict=True):
            if part:
                meta, arrays = encode(part)
                await self.ep.send(shard, APPLY, arrays=arrays, meta=meta)
        if msg.meta["final"]:
            self._final_regions.add(region)
            self.clock.on_remote_clock(region, 1 << 40)
        else:
            self.clock.on_remote_clock(region, int(msg.meta["clock"]))
        allowed = min(self.clock.slowest + self.clock.ds, 1 << 40)
        if allowed != self.allowed:
            self.allowed = allowed
            for shard in self.shards:
                await self.ep.send(shard, ALLOW, control=True, meta={"clock": allowed})
