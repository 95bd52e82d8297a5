"""Gaia's overlay hub: relays a group's updates and combines them for the other hubs."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import Endpoint, Message

from ..checkpoint import Checkpointed
from ..coded_updates import CodedUpdates
from ..delivery import Outbox, SeqWindow
from ..dispatch import dispatch
from ..sparse_codec import Update, decode, encoding_of
from .wire import (
    ACK,
    BARRIER,
    RESTARTED,
    UPDATE,
    Acks,
    Deferred,
    Sender,
    merge,
    peer_meta,
    serve_in_batches,
    serve_until,
)


class GaiaHub(Checkpointed):
    """The hub of an overlay group: relays each member's update to the other members,
    merges one update per member into a combined one for the other groups' hubs, and fans
    the other hubs' combined updates out to its members. Barriers go ahead of updates.

    The mirrors it serves may be restarted: with `retain` it asks for acknowledgements,
    keeps what it sent until they come, and sends it again to a mirror that says it
    restarted; it drops updates it has had already. With `checkpoint` the hub itself can
    be restarted after a crash: it writes its state (what it keeps to send, the member
    updates waiting to be combined, what it has received) there after each batch of
    frames, before the acknowledgements and sends that depend on it leave (as a mirror
    does); a successor loads it and has its members and the other hubs resend what it had
    not acknowledged. With `bits` 8 or 4 its combined updates go as codes, with error
    feedback, as a mirror's (the residual is in the checkpoint).

    `run()` returns when every member and every other group has sent its final update
    (and, with `retain`, all it sent is acknowledged).
    """

    _what = "hub"

    def __init__(self, endpoint: Endpoint, members: Mapping[str, str],
                 hubs: Mapping[str, str], shapes: Mapping[str, tuple[int, int]],
                 other_regions: Sequence[str], *, barrier: str = "auto",
                 rates: Mapping[str, float] | None = None, retain: bool = False,
                 bits: int = 0, checkpoint: Path | None = None,
                 on_combined: Callable[[int], None] | None = None) -> None:
        self.ep = endpoint
        self.on_combined = on_combined  # called with the count after each combined update
        self.checkpoint = checkpoint
        self.resumed = False
        self._dirty = False
        self._send: Endpoint | Deferred = (endpoint if checkpoint is None
                                            else Deferred(endpoint))
        self.members = dict(members)  # region -> mirror address
        self.hubs = [h for h in hubs.values() if h != endpoint.address]
        self.shapes = dict(shapes)
        self.other_regions = set(other_regions)
        self.counters: Counter[str] = Counter()
        self.sender = Sender(self._send, self.counters, barrier, rates,
                             retain=retain or checkpoint is not None,
                             coder=CodedUpdates(shapes, bits) if bits else None)
        self._acks = Acks()
        self._queues: dict[str, deque[tuple[int, bool, Update]]] = {
            r: deque() for r in self.members}
        self._member_final: set[str] = set()
        self._remote_final: set[str] = set()
        self._seq_map: dict[tuple[str, int], dict[str, int]] = {}
        self._received: dict[str, SeqWindow] = {}
        self._by_address = {a: r for r, a in self.members.items()}
        self._handlers = {UPDATE: self._on_update, BARRIER: self._on_barrier,
                          ACK: self._on_ack, RESTARTED: self._on_restarted}

    async def run(self) -> None:
        """Serve until every member and every other group is final, and all is acked."""
        def done() -> bool:
            return (self._member_final == set(self.members)
                    and self._remote_final >= self.other_regions
                    and not len(self.sender.outbox))

        if self.checkpoint is None:
            await serve_until(self.ep, self.counters, self._handle, done)
            return
        self._save()  # after a restore: the same state again
        if self.resumed:
            for peer in [*self.members.values(), *self.hubs]:
                await self._send.send(peer, RESTARTED, control=True)
                await self.sender.resend(peer)
        await self._commit()
        # committing after each batch: a checkpoint if the state changed, then the held
        # acks and sends
        await serve_in_batches(self.ep, self.counters, self._handle, done, self._commit)

    async def _commit(self) -> None:
        if self._dirty:
            self._save()
        if isinstance(self._send, Deferred):
            await self._send.flush()

    def _targets(self, src: str) -> list[str]:
        if src in self._by_address:
            return [a for a in self.members.values() if a != src]
        if src in self.hubs:
            return list(self.members.values())
        raise ValueError(f"{src} is neither a member mirror nor a hub")

    async def _handle(self, msg: Message) -> None:
        self._targets(msg.src)  # a frame from neither a member nor a hub is refused
        await dispatch(self._handlers, msg, "a hub")

    async def _on_ack(self, msg: Message) -> None:
        self.sender.acked(msg)
        self._dirty = True

    async def _on_restarted(self, msg: Message) -> None:
        self.counters["peer_restarts"] += 1
        await self.sender.resend(msg.src)

    @staticmethod
    def _encoded(msg: Message) -> tuple[dict[str, object], list[object]]:
        return encoding_of(msg.meta), list(msg.arrays)

    async def _on_barrier(self, msg: Message) -> None:
        seq = int(msg.meta["seq"])
        if seq in self._received.setdefault(msg.src, SeqWindow()):
            self.counters["late_barriers"] += 1
            return
        relayed = {dst: self.sender.next_seq(dst) for dst in self._targets(msg.src)}
        self._seq_map[(msg.src, seq)] = relayed
        self._dirty = True
        encoded = self._encoded(msg)
        for dst, out_seq in relayed.items():
            await self.sender.send_barrier(dst, out_seq, encoded)

    async def _on_update(self, msg: Message) -> None:
        seq = int(msg.meta["seq"])
        received = self._received.setdefault(msg.src, SeqWindow())
        encoded = self._encoded(msg)
        _, clocks, final = peer_meta(msg)
        # A member's update is merged here (decoded, so a bad one is refused before its
        # seq counts); another hub's is only relayed, and its receivers decode it.
        update = decode(msg.meta, msg.arrays) if msg.src in self._by_address else None
        self._acks.owe(msg, seq)
        fresh = received.add(seq)
        await self._acks.flush(self._send)  # with a checkpoint: once it holds this update
        if not fresh:
            self.counters["duplicate_updates"] += 1
            return
        self._dirty = True
        relayed = self._seq_map.pop((msg.src, seq), {})
        seqs = {dst: relayed.get(dst) or self.sender.next_seq(dst)
                for dst in self._targets(msg.src)}
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
            merged = merge(updates)
            self.counters["combined"] += 1
            self.counters["elements_in"] += sum(len(i) for u in updates for i, _ in u.values())
            encoded = await self.sender.send_to_all(
                self.hubs, merged, self.shapes, clocks, final,
                last=self._member_final == set(self.members))
            self.counters["elements_out"] += sum(len(a) for a in encoded[1][1::2])
            if self.on_combined is not None:
                self.on_combined(self.counters["combined"])

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        outbox, arrays = self.sender.outbox.state("outbox")
        queues: dict[str, list[list[Any]]] = {}
        for region, queue in self._queues.items():
            queues[region] = []
            for i, (clock, final, update) in enumerate(queue):
                tables = list(update)
                for k, table in enumerate(tables):
                    idx, vals = update[table]
                    arrays[f"queue/{region}/{i}/{k}/idx"] = idx
                    arrays[f"queue/{region}/{i}/{k}/vals"] = vals
                queues[region].append([clock, final, tables])
        if self.sender.coder is not None:
            arrays.update(self.sender.coder.state("residual"))
        meta = {"address": self.ep.address, "members": self.members,
                "seq": self.sender.seq, "outbox": outbox, "queues": queues,
                "member_final": sorted(self._member_final),
                "remote_final": sorted(self._remote_final),
                "seq_map": [[src, seq, relayed]
                            for (src, seq), relayed in self._seq_map.items()],
                "received": {p: w.state() for p, w in self._received.items()},
                "counters": dict(self.counters)}
        return meta, arrays

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if meta["address"] != self.ep.address or meta["members"] != self.members:
            raise ValueError(f"it is of {meta['address']} with members {meta['members']}")
        self.sender.seq = {d: int(s) for d, s in meta["seq"].items()}
        self.sender.outbox = Outbox.from_state(meta["outbox"], arrays, "outbox")
        if self.sender.coder is not None:
            self.sender.coder.load(arrays, "residual")
        self._queues = {
            region: deque((int(clock), bool(final), {
                table: (arrays[f"queue/{region}/{i}/{k}/idx"],
                        arrays[f"queue/{region}/{i}/{k}/vals"])
                for k, table in enumerate(tables)})
                for i, (clock, final, tables) in enumerate(items))
            for region, items in meta["queues"].items()}
        self._member_final = set(meta["member_final"])
        self._remote_final = set(meta["remote_final"])
        self._seq_map = {(src, int(seq)): {d: int(n) for d, n in relayed.items()}
                         for src, seq, relayed in meta["seq_map"]}
        self._received = {p: SeqWindow.from_state(w) for p, w in meta["received"].items()}
        self.counters.update(meta["counters"])

    def _save(self) -> None:
        self._write_checkpoint()
        self._dirty = False
