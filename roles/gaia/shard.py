"""Gaia's PS shard: a region's replica rows, its significance filter, and the reads a
selective barrier holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.workloads import Params

from ..delivery import Encoded
from ..dispatch import dispatch
from ..ps import PSShard
from ..ps_plan import KeyRanges
from ..significance import SignificanceFilter, TopKFilter
from ..sparse_codec import Update, decode, decode_indices, encode
from .wire import (
    ALLOW,
    APPLY,
    BLOCK,
    GOT,
    RESTARTED,
    RESUME,
    STOP,
    STOPPED,
    UPDATE,
)


class GaiaShard(PSShard):
    """A PS shard of one region's replica; filters its workers' updates for the WAN and
    holds reads of rows a selective barrier blocked until their values arrive."""

    def __init__(self, endpoint: Endpoint, index: int, ranges: KeyRanges, init: Params,
                 workers: Sequence[str], mirror: str, *, v: float = 0.01,
                 absolute: float | None = None, ds: int = 2, topk: float | None = None,
                 **kw: Any) -> None:
        super().__init__(endpoint, index, ranges, init, workers, **kw)
        self.mirror = mirror
        shapes = {t: a.shape for t, a in self.tables.items()}
        # topk: the same shape, but each clock sends the top-k share, not what is significant
        self.filter = (SignificanceFilter(shapes, v=v, absolute=absolute) if topk is None
                       else TopKFilter(shapes, share=topk))
        self.gate.limit = ds
        self._stopped = False
        self._sent_final = False
        self.cols = {t: ranges.shapes[t][1] for t in ranges.shapes}
        #: Per table, per local row: how many barriers block it now.
        self.blocked = {t: np.zeros(len(a), np.int32) for t, a in self.tables.items()}
        self._blocks: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._applied_seq: dict[str, int] = {}
        self._held: list[tuple[Message, list[np.ndarray | None]]] = []
        #: Remote applies done (the mirror numbers them), and how many the checkpoint has.
        self.applied_n = 0
        self._saved_applied_n = 0
        #: Updates for the mirror: (clock, final, encoded); `_outbox` (checkpointing only)
        #: keeps them until gaia.got, `_unsent` until they are sent.
        self._outbox: list[tuple[int, bool, Encoded]] = []
        self._unsent: list[tuple[int, bool, Encoded]] = []
        self._from_mirror = {APPLY: self._on_apply, BLOCK: self._on_block,
                             ALLOW: self._on_allow, GOT: self._on_got,
                             RESTARTED: self._on_mirror_restarted, STOP: self._on_stop}

    def _finished(self) -> bool:
        return self._stopped

    def _applied(self, table: str, rows: np.ndarray | None, delta: np.ndarray) -> None:
        self.filter.add(table, rows, delta)

    def _to_global(self, table: str, idx: np.ndarray) -> np.ndarray:
        return idx + self.lo[table] * self.cols[table]

    def _queue_update(self, clock: int, update: Update, final: bool) -> None:
        entry = (clock, final, encode({t: (self._to_global(t, idx), vals)
                                       for t, (idx, vals) in update.items()}))
        self._unsent.append(entry)
        if self.checkpoint is not None:
            self._outbox.append(entry)

    async def _send_update(self, clock: int, final: bool, encoded: Encoded) -> None:
        meta, arrays = encoded
        durable = self.checkpoint is not None
        await self.ep.send(self.mirror, UPDATE, arrays=arrays,
                           meta={"clock": clock, "final": final, **meta, "ack": durable,
                                 "applied": self._saved_applied_n if durable
                                 else self.applied_n})

    def _clock_advanced(self, before: int, after: int) -> None:
        if self.gate.all_done:
            if not self._sent_final:
                self._sent_final = True
                self._queue_update(before, self.filter.flush(), final=True)
            return
        for clock in range(before + 1, after + 1):
            self._queue_update(clock, self.filter.select(self.tables, clock), final=False)

    async def _sent_after_checkpoint(self) -> None:
        unsent, self._unsent = self._unsent, []
        for clock, final, encoded in unsent:
            await self._send_update(clock, final, encoded)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        for t in self.tables:
            arrays[f"accum/{t}"] = self.filter.accum[t]
        blocks = []
        for i, ((origin, seq), rows) in enumerate(self._blocks.items()):
            blocks.append([origin, seq, list(rows)])
            arrays.update({f"block/{i}/{t}": r for t, r in rows.items()})
        outbox = []
        for i, (clock, final, (enc_meta, enc_arrays)) in enumerate(self._outbox):
            outbox.append([clock, final, enc_meta, len(enc_arrays)])
            arrays.update({f"outbox/{i}/{j}": a for j, a in enumerate(enc_arrays)})
        meta["gaia"] = {"updated": self.filter.counters.updated,
                        "sent": self.filter.counters.sent, "blocks": blocks,
                        "applied_seq": self._applied_seq, "applied_n": self.applied_n,
                        "sent_final": self._sent_final, "stopped": self._stopped,
                        "outbox": outbox}
        return meta, arrays

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._load_state(meta, arrays)
        g = meta["gaia"]
        for t in self.tables:
            self.filter.accum[t][...] = arrays[f"accum/{t}"]
        self.filter.counters.updated, self.filter.counters.sent = g["updated"], g["sent"]
        self._blocks = {(origin, int(seq)): {t: arrays[f"block/{i}/{t}"] for t in tables}
                        for i, (origin, seq, tables) in enumerate(g["blocks"])}
        for rows in self._blocks.values():  # the counts are the open blocks, summed
            for t, r in rows.items():
                self.blocked[t][r] += 1
        self._applied_seq = {o: int(q) for o, q in g["applied_seq"].items()}
        self.applied_n = self._saved_applied_n = int(g["applied_n"])
        self._sent_final, self._stopped = bool(g["sent_final"]), bool(g["stopped"])
        self._outbox = [(int(clock), bool(final),
                         (enc_meta, [arrays[f"outbox/{i}/{j}"] for j in range(n)]))
                        for i, (clock, final, enc_meta, n) in enumerate(g["outbox"])]

    def _save(self) -> None:
        applied_n = self.applied_n
        super()._save()
        self._saved_applied_n = applied_n

    async def _announce_resume(self) -> None:
        await self.ep.send(self.mirror, RESUME, control=True,
                           meta={"applied": self.applied_n})
        await self._resend_to_mirror()
        await super()._announce_resume()

    async def _resend_to_mirror(self) -> None:
        """The updates the mirror has not acknowledged (it ignores those it has), and
        gaia.stopped if this shard has stopped."""
        for clock, final, encoded in self._outbox:
            await self._send_update(clock, final, encoded)
        if self._stopped and self.checkpoint is not None:
            await self.ep.send(self.mirror, STOPPED, control=True)

    # -- barriers and remote updates ---------------------------------------------------------

    def _is_blocked(self, msg: Message, rows: list[np.ndarray | None]) -> bool:
        for table, r in zip(msg.meta["tables"], rows, strict=True):
            counts = self.blocked[table]
            if (counts.any() if r is None else counts[r].any()):
                return True
        return False

    async def _serve(self, msg: Message, rows: list[np.ndarray | None]) -> None:
        if self._is_blocked(msg, rows):
            self.counters["reads_held_by_barrier"] += 1
            self._held.append((msg, rows))
            return
        await super()._serve(msg, rows)

    def _local_rows_of(self, table: str, rows: np.ndarray) -> np.ndarray:
        if table not in self.tables:
            raise KeyError(f"unknown table {table!r}")
        local = rows - self.lo[table]
        if len(local) and (local.min() < 0 or local.max() >= len(self.tables[table])):
            raise IndexError(f"gaia.block: rows of {table} outside this shard")
        return local

    def _block(self, msg: Message) -> None:
        origin, seq = str(msg.meta["origin"]), int(msg.meta["seq"])
        if seq <= self._applied_seq.get(origin, -1):
            self.counters["late_barriers"] += 1  # its values are here already
            return
        if (origin, seq) in self._blocks:  # resent by the mirror after our restart
            self.counters["duplicate_blocks"] += 1
            return
        rows = {t: self._local_rows_of(t, r)
                for t, r in decode_indices(msg.meta, msg.arrays).items()}
        for t, r in rows.items():
            self.blocked[t][r] += 1
        self._blocks[(origin, seq)] = rows
        self.counters["blocks"] += 1

    def _apply_remote(self, msg: Message) -> list[Any]:
        n = msg.meta.get("n")
        if n is not None:
            if n <= self.applied_n:
                self.counters["duplicate_applies"] += 1
                return []
            if n != self.applied_n + 1:
                if not self.resumed:
                    raise ValueError(f"gaia.apply n={n} after n={self.applied_n}: one lost")
                # Sent to our predecessor after our checkpoint; the mirror resends it.
                self.counters["applies_before_replay"] += 1
                return []
        update = decode(msg.meta, msg.arrays)
        checked = []
        for table, (idx, vals) in update.items():
            if table not in self.tables:
                raise KeyError(f"unknown table {table!r}")
            flat = self.tables[table].reshape(-1)
            local = idx - self.lo[table] * self.cols[table]
            if len(local) and (local.min() < 0 or local.max() >= flat.size):
                raise IndexError(f"gaia.apply: indices of {table} outside this shard")
            checked.append((flat, local, vals))
        for flat, local, vals in checked:
            np.add.at(flat, local, vals)
        self.counters["applies"] += 1
        if n is not None:
            self.applied_n = n
        origin, seq = msg.meta.get("origin"), msg.meta.get("seq")
        if origin is None or seq is None:
            return []
        self._applied_seq[str(origin)] = max(self._applied_seq.get(str(origin), -1), int(seq))
        rows = self._blocks.pop((str(origin), int(seq)), None)
        if rows is None:
            return []
        for t, r in rows.items():
            self.blocked[t][r] -= 1
        held, self._held = self._held, []
        return held  # served again by the caller; still-blocked ones are held again

    async def _handle_other(self, msg: Message) -> list[Any]:
        """The mirror's frames, through the table (each returns the reads now servable)."""
        if msg.src != self.mirror:
            raise ValueError(f"{msg.type} is only accepted from this region's mirror")
        return await dispatch(self._from_mirror, msg, "a Gaia shard")

    async def _on_apply(self, msg: Message) -> list[Any]:
        return self._apply_remote(msg)

    async def _on_block(self, msg: Message) -> list[Any]:
        self._block(msg)
        return []

    async def _on_allow(self, msg: Message) -> list[Any]:
        return self.gate.set_limit(int(msg.meta["clock"]))

    async def _on_got(self, msg: Message) -> list[Any]:
        clock, final = int(msg.meta["clock"]), bool(msg.meta["final"])
        self._outbox = [e for e in self._outbox if (not final if e[1] else e[0] > clock)]
        return []

    async def _on_mirror_restarted(self, msg: Message) -> list[Any]:
        """The mirror restarted from its checkpoint."""
        self.counters["mirror_restarts"] += 1
        await self._resend_to_mirror()
        return []

    async def _on_stop(self, msg: Message) -> list[Any]:
        if self._stopped:  # repeated by a restarted mirror
            return []
        self._stopped = True
        if self.checkpoint is not None:
            self._save()
            await self.ep.send(self.mirror, STOPPED, control=True)
        return []
