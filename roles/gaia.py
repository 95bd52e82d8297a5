"""Gaia's roles: a region's PS shard with a significance filter, the region's mirror, and
the overlay hub of a group of regions.

Frames (docs/PROTOCOL.md, "Gaia"); element indices are flat indices into a table's
global array (row * columns + column); updates use the compact form of `sparse_codec`
(meta {tables, enc}, per table an index part and `<f4` values):
  gaia.update   shard -> own mirror: meta {clock, final, tables, enc}. `clock`: the
                region's local clocks completed; `final`: its last update (after a flush).
                mirror/hub -> mirror/hub: meta {seq, clocks {region: clock}, final
                [regions], tables, enc}: the summed updates of the regions in `clocks`.
  gaia.barrier  mirror/hub -> mirror/hub, control, sent just before the gaia.update with the
                same `seq` (when earlier updates are still queued on the path, or always):
                meta {seq, tables, enc}, one index array (rows) per table.
                The selective barrier: reads of those rows wait until the values arrive.
  gaia.block    mirror -> own shard, control: meta {origin, seq, tables, enc}: the rows of
                this shard a barrier named.
  gaia.apply    mirror -> own shard: add these remote updates; meta {origin, seq, tables,
                enc}; unblocks the rows of the gaia.block with the same origin and seq.
  gaia.allow    mirror -> own shard, control: meta {clock}: reads beyond this clock wait
                (the mirror clock: slowest other region + DS).
  gaia.stop     mirror -> own shard, data (after every apply): every region has finished.
Recovery of a shard restarted from its checkpoint (roles/ps.py has the worker side):
  gaia.apply    meta + {n}: numbered 1, 2, ... per shard; the shard ignores an n it has, and
                the mirror keeps each apply until the shard's checkpoint has it.
  gaia.update   shard -> mirror: meta + {applied, ack}: `applied` is the last n in the
                shard's latest checkpoint (the mirror forgets those); with `ack` the
                shard keeps the update (it is in its checkpoint) until gaia.got.
  gaia.got      mirror -> shard, control, meta {clock, final}: the mirror has the shard's
                updates up to `clock` (and its final one); a repeated update is ignored.
  gaia.resume   shard -> mirror, control, meta {applied}: the shard restarted from a
                checkpoint with applies up to `applied`: the mirror sends it the later
                ones, the blocks of barriers whose values have not come, the current
                gaia.allow and, if sent already, gaia.stop.
  gaia.stopped  shard -> mirror, control: a checkpointing shard has gaia.stop in its
                checkpoint; the mirror exits only when each has said so.
Recovery of a mirror restarted from its checkpoint (docs/PROTOCOL.md §4):
  gaia.update   mirror/hub -> mirror/hub: meta + {ack}: `seq` counts 1, 2, ... per
                destination; with `ack` the sender keeps it until gaia.ack.
  gaia.ack      mirror/hub -> the update's sender, control, meta {seqs}: these are in the
                receiver's checkpoint (a hub: received).
  gaia.restarted mirror -> its shards and peers, control: resend what I have not
                acknowledged (shards: their updates, and gaia.stopped if stopped).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message
from geoml.bus.frame import CONTROL_MAX_BYTES
from geoml.workloads import Params

from .checkpoint import Checkpointed
from .delivery import Encoded, Outbox, Sent, SeqWindow
from .ps import PSShard
from .ps_plan import KeyRanges
from .significance import LinkBacklog, MirrorClock, SignificanceFilter
from .sparse_codec import Update, decode, decode_indices, encode, encode_indices

log = logging.getLogger("geoml.roles.gaia")

UPDATE, BARRIER, BLOCK = "gaia.update", "gaia.barrier", "gaia.block"
APPLY, ALLOW, STOP = "gaia.apply", "gaia.allow", "gaia.stop"
GOT, RESUME, STOPPED = "gaia.got", "gaia.resume", "gaia.stopped"
ACK, RESTARTED = "gaia.ack", "gaia.restarted"
#: Room left for the header when deciding whether a barrier fits a control frame.
_HEADER_ROOM = 4096
_NEVER = 1 << 40


def _merge(updates: Sequence[Update]) -> Update:
    """The element-wise sum of several updates (duplicates are summed when encoded)."""
    tables: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for update in updates:
        for t, pair in update.items():
            tables.setdefault(t, []).append(pair)
    return {t: (np.concatenate([i for i, _ in pairs]), np.concatenate([v for _, v in pairs]))
            for t, pairs in tables.items()}


def _rows_of(update: Update, shapes: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """The rows an update touches (global row ids, per table)."""
    return {t: np.unique(idx // shapes[t][1]) for t, (idx, _) in update.items()}


BARRIER_MODES = ("auto", "always", "off")


class _Sends(Protocol):
    """What a role sends through: its endpoint, or a `_Deferred` in front of it."""

    address: str

    async def send(self, dst: str, ftype: str, **kw: Any) -> None: ...


class _Sender:
    """Sends barrier + update pairs numbered per destination, counting what it sent.

    Barrier mode "auto" (Gaia's rule): a barrier goes ahead of an update only when earlier
    updates to that destination are estimated to be still queued on the path (`rates`:
    bytes/s per destination address); "always": ahead of every update; "off": never.
    With `retain`, each update asks for a gaia.ack and is kept (`outbox`) until it comes.
    """

    def __init__(self, ep: _Sends, counters: Counter[str], barrier: str,
                 rates: Mapping[str, float] | None = None, retain: bool = False) -> None:
        if barrier not in BARRIER_MODES:
            raise ValueError(f"barrier mode must be one of {', '.join(BARRIER_MODES)}, "
                             f"got {barrier!r}")
        self.ep, self.counters, self.barrier = ep, counters, barrier
        self.retain = retain
        self.seq: dict[str, int] = {}
        self.outbox = Outbox()
        self._backlog = {dst: LinkBacklog(rate) for dst, rate in (rates or {}).items()
                         if rate != float("inf")}

    def wants_barrier(self, dst: str) -> bool:
        """Should the next update to `dst` be preceded by a barrier?"""
        if self.barrier != "auto":
            return self.barrier == "always"
        backlog = self._backlog.get(dst)
        return backlog is not None and backlog.queued(asyncio.get_running_loop().time()) > 0

    def next_seq(self, dst: str) -> int:
        self.seq[dst] = self.seq.get(dst, 0) + 1
        return self.seq[dst]

    async def send_barrier(self, dst: str, seq: int, encoded: Encoded) -> None:
        meta, arrays = encoded
        size = sum(a.nbytes for a in arrays)
        control = size + _HEADER_ROOM <= CONTROL_MAX_BYTES
        if not control:
            self.counters["barriers_as_data"] += 1  # still before the values, just not faster
        self.counters["barriers_sent"] += 1
        await self.ep.send(dst, BARRIER, arrays=arrays, control=control,
                           meta={"seq": seq, **meta})

    async def send_to_all(self, dsts: Sequence[str], update: Update,
                          shapes: Mapping[str, tuple[int, int]], clocks: dict[str, int],
                          final: list[str]) -> Encoded:
        """Send `update` to each of `dsts`, each behind a barrier when it wants one (the
        rows are worked out once, and only then); returns the encoded update."""
        encoded = encode(update)
        seqs = {dst: self.next_seq(dst) for dst in dsts}
        self.record(seqs, clocks, final, encoded)
        rows = None
        for dst, seq in seqs.items():
            if encoded[0]["tables"] and self.wants_barrier(dst):
                if rows is None:
                    rows = encode_indices(_rows_of(update, shapes))
                await self.send_barrier(dst, seq, rows)
            await self.send_update(dst, seq, clocks, final, encoded)
        return encoded

    def record(self, seqs: dict[str, int], clocks: dict[str, int], final: list[str],
               encoded: Encoded) -> None:
        """Keep an update until each destination acknowledges it (with `retain`)."""
        if self.retain:
            self.outbox.add(Sent(seqs, clocks, final, encoded))

    async def send_update(self, dst: str, seq: int, clocks: dict[str, int], final: list[str],
                          encoded: Encoded) -> None:
        meta, arrays = encoded
        if dst in self._backlog:
            self._backlog[dst].add(sum(a.nbytes for a in arrays),
                                   asyncio.get_running_loop().time())
        extra = {"ack": True} if self.retain else {}
        await self.ep.send(dst, UPDATE, arrays=arrays,
                           meta={"seq": seq, "clocks": clocks, "final": final, **meta,
                                 **extra})

    def acked(self, msg: Message) -> None:
        """A gaia.ack from a destination: forget what it has."""
        seqs = msg.meta.get("seqs")
        if not isinstance(seqs, list):
            raise ValueError(f"{ACK} from {msg.src} needs meta seqs (a list)")
        self.counters["acks_received"] += 1
        self.outbox.ack(msg.src, (int(s) for s in seqs))

    async def resend(self, dst: str) -> None:
        """`dst` restarted: send it again every update it has not acknowledged (without
        barriers: the values are what matter, and it drops the ones it has)."""
        for seq, item in self.outbox.unacked(dst):
            self.counters["updates_resent"] += 1
            await self.send_update(dst, seq, item.clocks, item.final, item.encoded)


class _Acks:
    """The gaia.acks a receiver owes, per sender, sent in one frame each when flushed."""

    def __init__(self) -> None:
        self._owed: dict[str, list[int]] = {}

    def owe(self, msg: Message, seq: int) -> None:
        if msg.meta.get("ack"):
            self._owed.setdefault(msg.src, []).append(seq)

    async def flush(self, ep: _Sends) -> None:
        owed, self._owed = self._owed, {}
        for src, seqs in owed.items():
            await ep.send(src, ACK, control=True, meta={"seqs": seqs})


class _Deferred:
    """Sends held back until the sender's next checkpoint has the state they come from
    (write-ahead): a crash then never leaves a frame out that its successor does not know
    it sent."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.address = ep.address
        self._held: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def send(self, *args: Any, **kw: Any) -> None:
        self._held.append((args, kw))

    async def flush(self) -> None:
        held, self._held = self._held, []
        for args, kw in held:
            await self.ep.send(*args, **kw)


async def _serve_until(ep: Endpoint, counters: Counter[str],
                       handle: Callable[[Message], Awaitable[None]],
                       done: Callable[[], bool]) -> None:
    """Handle frames until `done()`; a frame that cannot be handled is logged and counted
    as refused, and serving goes on."""
    while not done():
        await _handle_or_refuse(ep, counters, handle, await ep.recv())


async def _handle_or_refuse(ep: Endpoint, counters: Counter[str],
                            handle: Callable[[Message], Awaitable[None]],
                            msg: Message) -> None:
    """`handle(msg)`; a frame it cannot handle is logged and counted as refused."""
    try:
        await handle(msg)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        counters["refused"] += 1
        log.warning("%s refused %s from %s: %s", ep.address, msg.type, msg.src, exc)


def _peer_meta(msg: Message) -> tuple[int, dict[str, int], list[str]]:
    """(seq, clocks, final) of a mirror-to-mirror gaia.update, validated."""
    seq, clocks, final = msg.meta.get("seq"), msg.meta.get("clocks"), msg.meta.get("final")
    if not isinstance(seq, int) or not isinstance(clocks, dict) or not isinstance(final, list):
        raise ValueError(f"{msg.type} from {msg.src} needs meta seq, clocks and final")
    return seq, {str(r): int(c) for r, c in clocks.items()}, [str(r) for r in final]


class GaiaShard(PSShard):
    """A PS shard of one region's replica; filters its workers' updates for the WAN and
    holds reads of rows a selective barrier blocked until their values arrive."""

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
        if msg.src != self.mirror:
            raise ValueError(f"{msg.type} is only accepted from this region's mirror")
        if msg.type == APPLY:
            return self._apply_remote(msg)
        if msg.type == BLOCK:
            self._block(msg)
            return []
        if msg.type == ALLOW:
            return self.gate.set_limit(int(msg.meta["clock"]))
        if msg.type == GOT:
            clock, final = int(msg.meta["clock"]), bool(msg.meta["final"])
            self._outbox = [e for e in self._outbox
                            if (not final if e[1] else e[0] > clock)]
            return []
        if msg.type == RESTARTED:  # the mirror restarted from its checkpoint
            self.counters["mirror_restarts"] += 1
            await self._resend_to_mirror()
            return []
        if msg.type == STOP:
            if self._stopped:  # repeated by a restarted mirror
                return []
            self._stopped = True
            if self.checkpoint is not None:
                self._save()
                await self.ep.send(self.mirror, STOPPED, control=True)
            return []
        raise ValueError(f"a Gaia shard does not take {msg.type!r} frames")


class GaiaMirror(Checkpointed):
    """A region's mirror: ships significant updates between regions (directly to every
    other mirror, or through its group's hub), forwards selective barriers, and runs the
    mirror clock.

    With `checkpoint` it can be restarted after a crash: it writes its state there before
    any frame that depends on it leaves (group commit: after the frames waiting in its
    inbox are handled), asks its peers to acknowledge its updates and keeps them until they
    do, and acknowledges a shard's update only once it has been forwarded.

    `run()` returns when every region (this one included) has sent its final update, this
    region's shards have been told to stop, and (with `checkpoint`) every update it sent is
    acknowledged and its checkpointing shards have stopped.
    """

    _what = "mirror"

    def __init__(self, endpoint: Endpoint, region: str, shards: Sequence[str],
                 ranges: KeyRanges, mirrors: dict[str, str], *, ds: int = 2,
                 hub: str | None = None, barrier: str = "auto",
                 rates: Mapping[str, float] | None = None, checkpoint: Path | None = None,
                 on_forward: Callable[[int], None] | None = None) -> None:
        self.ep = endpoint
        self.region = region
        self.shards = list(shards)
        self.ranges = ranges
        self.mirrors = {r: a for r, a in mirrors.items() if r != region}
        self.hub = hub
        self.out = [hub] if hub is not None else list(self.mirrors.values())
        self.clock = MirrorClock(self.mirrors, ds)
        self.allowed = ds
        self.counters: Counter[str] = Counter()
        self.checkpoint = checkpoint
        self.on_forward = on_forward
        self.resumed = False
        self._send: Endpoint | _Deferred = (endpoint if checkpoint is None
                                            else _Deferred(endpoint))
        self.sender = _Sender(self._send, self.counters, barrier, rates,
                              retain=checkpoint is not None)
        self._acks = _Acks()
        self._dirty = False
        self._pending: dict[int, list[Update]] = {}
        self._reported: dict[int, set[str]] = {}
        self._final_shards: set[str] = set()
        self._final_regions: set[str] = set()
        #: This region's last clock merged and sent on (and whether its final update was).
        self._forwarded = 0
        self._forwarded_final = False
        #: Per shard: the clocks of its updates received, the applies sent to it
        #: (numbered) that its checkpoint may not have yet, and whether it checkpoints.
        self._got = {s: SeqWindow() for s in self.shards}
        self._final_clock = 0
        self._apply_n = dict.fromkeys(self.shards, 0)
        self._unacked: dict[str, deque[tuple[int, dict[str, Any], list[np.ndarray]]]] = {
            a: deque() for a in self.shards}
        self._durable_shards: set[str] = set()
        #: Barriers whose values have not come: (origin, seq) -> shard -> its gaia.block.
        self._open: dict[tuple[str, int], dict[str, Encoded]] = {}
        self._received: dict[str, SeqWindow] = {}  # per peer: the updates (seqs) it has
        self._stop_sent = False
        self._stopped: set[str] = set()
        self._errors_seen = endpoint.counters["errors"]

    @property
    def forwarded(self) -> int:
        """This region's last clock whose update went to the other regions."""
        return self._forwarded

    async def run(self) -> None:
        """Serve until all regions are final (and what needs acknowledging is)."""
        if self.checkpoint is not None:
            self._save()  # after a restore: the same state again
            if self.resumed:
                await self._announce_restart()
        await self._serve_until(lambda: (
            len(self._final_shards) == len(self.shards)
            and self._final_regions >= set(self.mirrors)))
        if not self._stop_sent:
            self._stop_sent = self._dirty = True
        for shard in self.shards:  # again after a restart: a shard ignores a second stop
            await self._send.send(shard, STOP)
        await self._commit()
        await self._serve_until(lambda: self._stopped >= self._durable_shards
                                and not len(self.sender.outbox), ending=True)

    async def _serve_until(self, done: Callable[[], bool], ending: bool = False) -> None:
        """Handle frames until `done()`, committing after each batch (the inbox empty, or
        64 frames): a checkpoint if the state changed, then the held sends and acks.
        `ending`: also watch for a shard gone before it said gaia.stopped."""
        batch = 0
        while not done():
            if ending:
                self._check_no_shard_gone()
                try:
                    msg = await self.ep.recv(timeout=1.0)
                except TimeoutError:
                    continue
            else:
                msg = await self.ep.recv()
            await _handle_or_refuse(self.ep, self.counters, self._handle, msg)
            batch += 1
            if batch >= 64 or not self.ep.pending:
                await self._commit()
                batch = 0
        await self._commit()

    def _check_no_shard_gone(self) -> None:
        """A shard the router could not deliver to (bus.error unreachable) while we wait
        for its gaia.stopped: it exited after stopping, and this mirror, restarted, did not
        have that in its checkpoint (the one window left: a crash between receiving
        gaia.stopped and the next commit). Stop with that reason instead of waiting."""
        new = self.ep.counters["errors"] - self._errors_seen
        self._errors_seen = self.ep.counters["errors"]
        for error in list(self.ep.errors)[-new:] if new else []:
            dst = error.get("dst")
            if (error.get("reason") == "unreachable"
                    and dst in self._durable_shards - self._stopped):
                raise GeomlError(f"{self.ep.address}: shard {dst} is gone without saying "
                                 f"gaia.stopped to this mirror (this mirror was restarted "
                                 f"between its gaia.stopped and the checkpoint after it); its "
                                 f"updates are all in, but the mirror cannot know it stopped")

    async def _commit(self) -> None:
        if self._dirty and self.checkpoint is not None:
            self._save()
        if isinstance(self._send, _Deferred):
            await self._send.flush()
        await self._acks.flush(self.ep)

    def _is_peer(self, src: str) -> bool:
        return src == self.hub if self.hub is not None else src in self.mirrors.values()

    async def _handle(self, msg: Message) -> None:
        if msg.src in self.shards and msg.type in (UPDATE, RESUME, STOPPED):
            if msg.type == UPDATE:
                await self._local(msg)
            elif msg.type == RESUME:
                await self._resume(msg)
            else:
                self._stopped.add(msg.src)
                self._dirty = True
        elif msg.type in (UPDATE, BARRIER, ACK, RESTARTED) and self._is_peer(msg.src):
            if msg.type == UPDATE:
                await self._remote(msg)
            elif msg.type == BARRIER:
                await self._barrier(msg)
            elif msg.type == ACK:
                self.sender.acked(msg)
            else:
                self.counters["peer_restarts"] += 1
                await self.sender.resend(msg.src)
        elif msg.type not in (UPDATE, BARRIER, ACK, RESTARTED):
            raise ValueError(f"a mirror does not take {msg.type!r} frames")
        else:
            raise ValueError(f"{msg.type} from {msg.src}, which is neither a shard of "
                             f"{self.region} nor a peer of its mirror")

    async def _resume(self, msg: Message) -> None:
        """A shard restarted from a checkpoint with applies up to meta applied."""
        self.counters["shard_restarts"] += 1
        self._durable_shards.add(msg.src)
        self._dirty = True
        await self._replay_to(msg.src, int(msg.meta["applied"]))

    async def _replay_to(self, shard: str, applied: int) -> None:
        """Send `shard` the applies after `applied`, the blocks of barriers whose values
        have not come, the mirror clock and, if sent, the stop."""
        for n, meta, arrays in self._unacked[shard]:
            if n > applied:
                await self._send.send(shard, APPLY, arrays=arrays, meta=meta)
                self.counters["applies_replayed"] += 1
        for blocks in self._open.values():
            if shard in blocks:
                meta, arrays = blocks[shard]
                await self._send.send(shard, BLOCK, arrays=arrays, control=True, meta=meta)
        await self._send.send(shard, ALLOW, control=True, meta={"clock": self.allowed})
        if self._stop_sent:
            await self._send.send(shard, STOP)

    async def _announce_restart(self) -> None:
        """After a restore: shards resend the updates not acknowledged (and say if they
        stopped), peers resend theirs, and everyone gets again what we may have sent."""
        for shard in self.shards:
            await self._send.send(shard, RESTARTED, control=True)
            await self._replay_to(shard, 0)  # a shard drops the applies it has
        for peer in self.out:
            await self._send.send(peer, RESTARTED, control=True)
            await self.sender.resend(peer)
        await self._commit()

    def _acked(self, msg: Message, clock: int, final: bool) -> bool:
        """Bookkeeping of a shard's update: forget the applies its checkpoint has; True
        when the update is one received already (a restarted shard or mirror resends)."""
        unacked = self._unacked[msg.src]
        applied = int(msg.meta.get("applied", 0))
        while unacked and unacked[0][0] <= applied:
            unacked.popleft()
            self._dirty = True
        if msg.meta.get("ack") and msg.src not in self._durable_shards:
            self._durable_shards.add(msg.src)
            self._dirty = True
        repeated = (msg.src in self._final_shards if final
                    else not self._got[msg.src].add(clock))
        if repeated:
            self.counters["duplicate_updates"] += 1
        return repeated

    async def _got_to(self, shard: str) -> None:
        """Tell `shard` what it no longer needs to keep: with a checkpoint here, what was
        forwarded (it is in the checkpoint the commit writes before this is sent); without,
        what arrived."""
        if self.checkpoint is None:
            clock, final = self._got[shard].base, shard in self._final_shards
        else:
            clock, final = self._forwarded, self._forwarded_final
        await self._send.send(shard, GOT, control=True, meta={"clock": clock, "final": final})

    async def _local(self, msg: Message) -> None:
        clock, final = int(msg.meta["clock"]), bool(msg.meta["final"])
        update = decode(msg.meta, msg.arrays)
        repeated = self._acked(msg, clock, final)
        if msg.meta.get("ack") and (repeated or self.checkpoint is None):
            await self._got_to(msg.src)
        if repeated:
            return
        key = -1 if final else clock
        self._pending.setdefault(key, []).append(update)
        self._reported.setdefault(key, set()).add(msg.src)
        if final:
            self._final_shards.add(msg.src)
            self._final_clock = max(self._final_clock, clock)
        while await self._forward_next():
            pass

    async def _forward_next(self) -> bool:
        """Merge and send on the next clock's update if every shard has sent its part
        (clocks go out in order, even when a restart has them come back out of order);
        the final one goes after the last clock. True if one went."""
        key = self._forwarded + 1
        if len(self._reported.get(key, ())) < len(self.shards):
            key = -1
            if (self._forwarded_final or self._forwarded < self._final_clock
                    or len(self._reported.get(key, ())) < len(self.shards)):
                return False
        final = key == -1
        clock = self._final_clock if final else key
        del self._reported[key]
        merged = _merge(self._pending.pop(key))
        self.counters["elements_sent"] += sum(len(i) for i, _ in merged.values())
        await self.sender.send_to_all(self.out, merged, self.ranges.shapes,
                                      {self.region: clock}, [self.region] if final else [])
        self._forwarded = clock
        self._forwarded_final = final
        self._dirty = True
        if self.checkpoint is not None:
            for shard in self._durable_shards:
                await self._got_to(shard)
        if self.on_forward is not None and not final:
            self.on_forward(clock)
        return True

    def _split(self, per_table: dict[str, np.ndarray], scale: bool
               ) -> list[dict[str, slice]]:
        """Per shard, per table: the slice of sorted indices (rows, or elements if
        `scale`) that shard owns."""
        parts: list[dict[str, slice]] = [{} for _ in self.shards]
        for table, idx in per_table.items():
            if table not in self.ranges.shapes:
                raise KeyError(f"unknown table {table!r}")
            bounds = self.ranges.bounds[table] * (self.ranges.shapes[table][1] if scale else 1)
            cuts = np.searchsorted(idx, bounds)
            for s in range(len(self.shards)):
                if cuts[s + 1] > cuts[s]:
                    parts[s][table] = slice(int(cuts[s]), int(cuts[s + 1]))
        return parts

    async def _barrier(self, msg: Message) -> None:
        rows = decode_indices(msg.meta, msg.arrays)
        seq = int(msg.meta["seq"])
        self.counters["barriers_received"] += 1
        if seq in self._received.setdefault(msg.src, SeqWindow()):
            blocks: dict[str, Encoded] = {}  # late: not kept
        else:
            blocks = self._open.setdefault((msg.src, seq), {})
            self._dirty = True
        for shard, part in zip(self.shards, self._split(rows, scale=False), strict=True):
            if part:
                meta, arrays = encode_indices({t: rows[t][sl] for t, sl in part.items()})
                meta = {"origin": msg.src, "seq": seq, **meta}
                blocks[shard] = (meta, arrays)
                await self.ep.send(shard, BLOCK, arrays=arrays, control=True, meta=meta)

    async def _remote(self, msg: Message) -> None:
        seq, clocks, final = _peer_meta(msg)
        update = decode(msg.meta, msg.arrays)
        parts = self._split({t: idx for t, (idx, _) in update.items()}, scale=True)
        self._acks.owe(msg, seq)
        if not self._received.setdefault(msg.src, SeqWindow()).add(seq):
            self.counters["duplicate_peer_updates"] += 1
            return
        self._dirty = True
        self._open.pop((msg.src, seq), None)
        for shard, part in zip(self.shards, parts, strict=True):
            if part:
                meta, arrays = encode({t: (update[t][0][sl], update[t][1][sl])
                                       for t, sl in part.items()})
                self._apply_n[shard] += 1
                meta = {"origin": msg.src, "seq": seq, "n": self._apply_n[shard], **meta}
                self._unacked[shard].append((self._apply_n[shard], meta, arrays))
                await self._send.send(shard, APPLY, arrays=arrays, meta=meta)
        for region, clock in clocks.items():
            if region in self.mirrors:
                self.clock.on_remote_clock(region, clock)
        for region in final:
            if region in self.mirrors:
                self._final_regions.add(region)
                self.clock.on_remote_clock(region, _NEVER)
        allowed = min(self.clock.slowest + self.clock.ds, _NEVER)
        if allowed != self.allowed:
            self.allowed = allowed
            for shard in self.shards:
                await self._send.send(shard, ALLOW, control=True, meta={"clock": allowed})

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        outbox, arrays = self.sender.outbox.state("outbox")
        unacked = {}
        for shard, applies in self._unacked.items():
            unacked[shard] = [[meta, len(a)] for _, meta, a in applies]
            for i, (_, _, a) in enumerate(applies):
                arrays.update({f"apply/{shard}/{i}/{j}": x for j, x in enumerate(a)})
        opened = []
        for i, ((origin, seq), blocks) in enumerate(self._open.items()):
            opened.append([origin, seq, {s: [m, len(a)] for s, (m, a) in blocks.items()}])
            for shard, (_, a) in blocks.items():
                arrays.update({f"block/{i}/{shard}/{j}": x for j, x in enumerate(a)})
        meta = {"region": self.region, "shards": self.shards, "seq": self.sender.seq,
                "outbox": outbox, "forwarded": self._forwarded,
                "forwarded_final": self._forwarded_final, "apply_n": self._apply_n,
                "unacked": unacked, "open": opened,
                "received": {p: w.state() for p, w in self._received.items()},
                "remote_clocks": self.clock.remote, "final_regions": sorted(self._final_regions),
                "allowed": self.allowed, "durable_shards": sorted(self._durable_shards),
                "stopped": sorted(self._stopped), "stop_sent": self._stop_sent,
                "counters": dict(self.counters)}
        return meta, arrays

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if meta["region"] != self.region or meta["shards"] != self.shards:
            raise ValueError(f"it is of {meta['region']} with shards {meta['shards']}")
        self.sender.seq = {d: int(s) for d, s in meta["seq"].items()}
        self.sender.outbox = Outbox.from_state(meta["outbox"], arrays, "outbox")
        self._forwarded = int(meta["forwarded"])
        self._forwarded_final = bool(meta["forwarded_final"])
        self._got = {s: SeqWindow(self._forwarded) for s in self.shards}
        self._final_shards = set(self.shards) if self._forwarded_final else set()
        self._final_clock = self._forwarded if self._forwarded_final else 0
        self._apply_n = {s: int(n) for s, n in meta["apply_n"].items()}
        self._unacked = {s: deque((int(m["n"]), m, [arrays[f"apply/{s}/{i}/{j}"]
                                                    for j in range(k)])
                                  for i, (m, k) in enumerate(applies))
                         for s, applies in meta["unacked"].items()}
        self._open = {(origin, int(seq)): {s: (m, [arrays[f"block/{i}/{s}/{j}"]
                                                   for j in range(k)])
                                           for s, (m, k) in blocks.items()}
                      for i, (origin, seq, blocks) in enumerate(meta["open"])}
        self._received = {p: SeqWindow.from_state(w) for p, w in meta["received"].items()}
        for region, clock in meta["remote_clocks"].items():
            self.clock.on_remote_clock(region, int(clock))
        self._final_regions = set(meta["final_regions"])
        self.allowed = int(meta["allowed"])
        self._durable_shards = set(meta["durable_shards"])
        self._stopped = set(meta["stopped"])
        self._stop_sent = bool(meta["stop_sent"])
        self.counters.update(meta["counters"])

    def _save(self) -> None:
        self._write_checkpoint()
        self._dirty = False


class GaiaHub:
    """The hub of an overlay group: relays each member's update to the other members,
    merges one update per member into a combined one for the other groups' hubs, and fans
    the other hubs' combined updates out to its members. Barriers go ahead of updates.

    A hub is not restarted, but the mirrors it serves may be: with `retain` it asks for
    acknowledgements, keeps what it sent until they come, and sends it again to a mirror
    that says it restarted; it drops updates it has had already and acknowledges at once.

    `run()` returns when every member and every other group has sent its final update
    (and, with `retain`, all it sent is acknowledged).
    """

    def __init__(self, endpoint: Endpoint, members: Mapping[str, str],
                 hubs: Mapping[str, str], shapes: Mapping[str, tuple[int, int]],
                 other_regions: Sequence[str], *, barrier: str = "auto",
                 rates: Mapping[str, float] | None = None, retain: bool = False) -> None:
        self.ep = endpoint
        self.members = dict(members)  # region -> mirror address
        self.hubs = [h for h in hubs.values() if h != endpoint.address]
        self.shapes = dict(shapes)
        self.other_regions = set(other_regions)
        self.counters: Counter[str] = Counter()
        self.sender = _Sender(endpoint, self.counters, barrier, rates, retain=retain)
        self._acks = _Acks()
        self._queues: dict[str, deque[tuple[int, bool, Update]]] = {
            r: deque() for r in self.members}
        self._member_final: set[str] = set()
        self._remote_final: set[str] = set()
        self._seq_map: dict[tuple[str, int], dict[str, int]] = {}
        self._received: dict[str, SeqWindow] = {}
        self._by_address = {a: r for r, a in self.members.items()}

    async def run(self) -> None:
        """Serve until every member and every other group is final, and all is acked."""
        await _serve_until(self.ep, self.counters, self._handle, lambda: (
            self._member_final == set(self.members)
            and self._remote_final >= self.other_regions and not len(self.sender.outbox)))

    def _targets(self, src: str) -> list[str]:
        if src in self._by_address:
            return [a for a in self.members.values() if a != src]
        if src in self.hubs:
            return list(self.members.values())
        raise ValueError(f"{src} is neither a member mirror nor a hub")

    async def _handle(self, msg: Message) -> None:
        if msg.type not in (UPDATE, BARRIER, ACK, RESTARTED):
            raise ValueError(f"a hub does not take {msg.type!r} frames")
        targets = self._targets(msg.src)
        if msg.type == ACK:
            self.sender.acked(msg)
            return
        if msg.type == RESTARTED:
            self.counters["peer_restarts"] += 1
            await self.sender.resend(msg.src)
            return
        seq = int(msg.meta["seq"])
        received = self._received.setdefault(msg.src, SeqWindow())
        encoded = ({"tables": msg.meta["tables"], "enc": msg.meta["enc"]}, list(msg.arrays))
        if msg.type == BARRIER:
            if seq in received:
                self.counters["late_barriers"] += 1
                return
            relayed = {dst: self.sender.next_seq(dst) for dst in targets}
            self._seq_map[(msg.src, seq)] = relayed
            for dst, out_seq in relayed.items():
                await self.sender.send_barrier(dst, out_seq, encoded)
            return
        _, clocks, final = _peer_meta(msg)
        # A member's update is merged here (decoded, so a bad one is refused before its
        # seq counts); another hub's is only relayed, and its receivers decode it.
        update = decode(msg.meta, msg.arrays) if msg.src in self._by_address else None
        self._acks.owe(msg, seq)
        fresh = received.add(seq)
        await self._acks.flush(self.ep)
        if not fresh:
            self.counters["duplicate_updates"] += 1
            return
        relayed = self._seq_map.pop((msg.src, seq), {})
        seqs = {dst: relayed.get(dst) or self.sender.next_seq(dst) for dst in targets}
        self.sender.record(seqs, clocks, final, encoded)
        for dst, out_seq in seqs.items():
            await self.sender.send_update(dst, out_seq, clocks, final, encoded)
        if msg.src in self.hubs:
            self._remote_final.update(final)
            return
        assert update is not None
        region = self._by_address[msg.src]
        self._queues[region].append((clocks.get(region, 0), region in final, update))
        await self._combine()

    async def _combine(self) -> None:
        """Send combined updates while every member that is not final has one queued."""
        while True:
            waiting = [r for r in self.members
                       if r not in self._member_final and not self._queues[r]]
            ready = [r for r in self.members if self._queues[r]]
            if waiting or not ready:
                return
            clocks: dict[str, int] = {}
            final: list[str] = []
            updates = []
            for r in ready:
                clock, is_final, update = self._queues[r].popleft()
                clocks[r] = clock
                updates.append(update)
                if is_final:
                    final.append(r)
                    self._member_final.add(r)
            merged = _merge(updates)
            self.counters["combined"] += 1
            self.counters["elements_in"] += sum(len(i) for u in updates for i, _ in u.values())
            encoded = await self.sender.send_to_all(self.hubs, merged, self.shapes, clocks,
                                                    final)
            self.counters["elements_out"] += sum(len(a) for a in encoded[1][1::2])
