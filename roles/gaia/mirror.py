"""Gaia's mirror: one per region; merges its shards' significant updates, exchanges them
with the other regions, runs the mirror clock."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message

from ..checkpoint import Checkpointed
from ..coded_updates import CodedUpdates
from ..delivery import Encoded, Outbox, SeqWindow
from ..dispatch import UnknownFrame, dispatch
from ..ps_plan import KeyRanges
from ..significance import MirrorClock
from ..sparse_codec import Update, decode, decode_indices, encode, encode_indices
from .wire import (
    ACK,
    ALLOW,
    APPLY,
    BARRIER,
    BLOCK,
    GOT,
    NEVER,
    RESTARTED,
    RESUME,
    STOP,
    STOPPED,
    UPDATE,
    Acks,
    Deferred,
    Sender,
    merge,
    peer_meta,
    serve_in_batches,
)


class GaiaMirror(Checkpointed):
    """A region's mirror: ships significant updates between regions (directly to every
    other mirror, or through its group's hub), forwards selective barriers, and runs the
    mirror clock.

    With `checkpoint` it can be restarted after a crash: it writes its state there before
    any frame that depends on it leaves (group commit: after the frames waiting in its
    inbox are handled), asks its peers to acknowledge its updates and keeps them until they
    do, and acknowledges a shard's update only once it has been forwarded.

    With `bits` 8 or 4 (topk's `--topk-bits`) the values it sends to the other regions go
    as codes, with error feedback (`roles/coded_updates.py`); the residual is checkpointed.

    `run()` returns when every region (this one included) has sent its final update, this
    region's shards have been told to stop, and (with `checkpoint`) every update it sent is
    acknowledged and its checkpointing shards have stopped.
    """

    _what = "mirror"

    def __init__(self, endpoint: Endpoint, region: str, shards: Sequence[str],
                 ranges: KeyRanges, mirrors: dict[str, str], *, ds: int = 2,
                 hub: str | None = None, barrier: str = "auto",
                 rates: Mapping[str, float] | None = None, checkpoint: Path | None = None,
                 on_forward: Callable[[int], None] | None = None, bits: int = 0) -> None:
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
        self._send: Endpoint | Deferred = (endpoint if checkpoint is None
                                            else Deferred(endpoint))
        self.sender = Sender(self._send, self.counters, barrier, rates,
                             retain=checkpoint is not None,
                             coder=CodedUpdates(ranges.shapes, bits) if bits else None)
        self._acks = Acks()
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
        # UPDATE is a local update from a shard, a remote one from a peer
        self._from_shards = {UPDATE: self._local, RESUME: self._resume,
                             STOPPED: self._on_stopped}
        self._from_peers = {UPDATE: self._remote, BARRIER: self._barrier, ACK: self._on_ack,
                            RESTARTED: self._on_peer_restarted}

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
        """Handle frames until `done()`, committing after each batch: a checkpoint if the
        state changed, then the held sends and acks. `ending`: also watch for a shard gone
        before it said gaia.stopped."""
        await serve_in_batches(self.ep, self.counters, self._handle, done, self._commit,
                               idle=self._check_no_shard_gone if ending else None)

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
        if isinstance(self._send, Deferred):
            await self._send.flush()
        await self._acks.flush(self.ep)

    def _is_peer(self, src: str) -> bool:
        return src == self.hub if self.hub is not None else src in self.mirrors.values()

    async def _handle(self, msg: Message) -> None:
        """A frame from one of the region's shards or from a peer, each through its own
        table."""
        if msg.src in self.shards and msg.type in self._from_shards:
            await dispatch(self._from_shards, msg, "a mirror")
        elif msg.type in self._from_peers and self._is_peer(msg.src):
            await dispatch(self._from_peers, msg, "a mirror")
        elif msg.type not in self._from_peers:
            raise UnknownFrame(f"a mirror does not take {msg.type!r} frames")
        else:
            raise ValueError(f"{msg.type} from {msg.src}, which is neither a shard of "
                             f"{self.region} nor a peer of its mirror")

    async def _on_stopped(self, msg: Message) -> None:
        self._stopped.add(msg.src)
        self._dirty = True

    async def _on_ack(self, msg: Message) -> None:
        self.sender.acked(msg)

    async def _on_peer_restarted(self, msg: Message) -> None:
        self.counters["peer_restarts"] += 1
        await self.sender.resend(msg.src)

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
        merged = merge(self._pending.pop(key))
        self.counters["elements_sent"] += sum(len(i) for i, _ in merged.values())
        await self.sender.send_to_all(self.out, merged, self.ranges.shapes,
                                      {self.region: clock}, [self.region] if final else [],
                                      last=final)
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
        seq, clocks, final = peer_meta(msg)
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
                self.clock.on_remote_clock(region, NEVER)
        allowed = min(self.clock.slowest + self.clock.ds, NEVER)
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
        if self.sender.coder is not None:
            arrays.update(self.sender.coder.state("residual"))
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
        if self.sender.coder is not None:
            self.sender.coder.load(arrays, "residual")
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
