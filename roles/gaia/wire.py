"""Gaia's frame kinds and what its roles share to send and serve them (the frames
are listed in the package's docstring and docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.bus.frame import CONTROL_MAX_BYTES

from ..coded_updates import CodedUpdates
from ..delivery import Encoded, Outbox, Sent
from ..significance import LinkBacklog
from ..sparse_codec import Update, encode, encode_indices

log = logging.getLogger("geoml.roles.gaia")

UPDATE, BARRIER, BLOCK = "gaia.update", "gaia.barrier", "gaia.block"
APPLY, ALLOW, STOP = "gaia.apply", "gaia.allow", "gaia.stop"
GOT, RESUME, STOPPED = "gaia.got", "gaia.resume", "gaia.stopped"
ACK, RESTARTED = "gaia.ack", "gaia.restarted"
#: Room left for the header when deciding whether a barrier fits a control frame.
HEADER_ROOM = 4096
#: The clock of a region that has finished: it never holds the mirror clock back.
NEVER = 1 << 40


def merge(updates: Sequence[Update]) -> Update:
    """The element-wise sum of several updates (duplicates are summed when encoded)."""
    tables: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for update in updates:
        for t, pair in update.items():
            tables.setdefault(t, []).append(pair)
    return {t: (np.concatenate([i for i, _ in pairs]), np.concatenate([v for _, v in pairs]))
            for t, pairs in tables.items()}


def rows_of(update: Update, shapes: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """The rows an update touches (global row ids, per table)."""
    return {t: np.unique(idx // shapes[t][1]) for t, (idx, _) in update.items()}


BARRIER_MODES = ("auto", "always", "off")


class Sends(Protocol):
    """What a role sends through: its endpoint, or a `Deferred` in front of it."""

    address: str

    async def send(self, dst: str, ftype: str, **kw: Any) -> None: ...


class Sender:
    """Sends barrier + update pairs numbered per destination, counting what it sent.

    Barrier mode "auto" (Gaia's rule): a barrier goes ahead of an update only when earlier
    updates to that destination are estimated to be still queued on the path (`rates`:
    bytes/s per destination address); "always": ahead of every update; "off": never.
    With `retain`, each update asks for a gaia.ack and is kept (`outbox`) until it comes.
    With `coder` (topk's `--topk-bits`) the values go as codes, with error feedback.
    """

    def __init__(self, ep: Sends, counters: Counter[str], barrier: str,
                 rates: Mapping[str, float] | None = None, retain: bool = False,
                 coder: CodedUpdates | None = None) -> None:
        if barrier not in BARRIER_MODES:
            raise ValueError(f"barrier mode must be one of {', '.join(BARRIER_MODES)}, "
                             f"got {barrier!r}")
        self.ep, self.counters, self.barrier = ep, counters, barrier
        self.retain = retain
        self.coder = coder
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
        control = size + HEADER_ROOM <= CONTROL_MAX_BYTES
        if not control:
            self.counters["barriers_as_data"] += 1  # still before the values, just not faster
        self.counters["barriers_sent"] += 1
        await self.ep.send(dst, BARRIER, arrays=arrays, control=control,
                           meta={"seq": seq, **meta})

    async def send_to_all(self, dsts: Sequence[str], update: Update,
                          shapes: Mapping[str, tuple[int, int]], clocks: dict[str, int],
                          final: list[str], last: bool = False) -> Encoded:
        """Send `update` to each of `dsts`, each behind a barrier when it wants one (the
        rows are worked out once, and only then); returns the encoded update. `last`: this
        sender sends no update after it (it carries the coder's residual)."""
        update, encoded = (self.coder.encode(update, last) if self.coder is not None
                           else (update, encode(update)))
        seqs = {dst: self.next_seq(dst) for dst in dsts}
        self.record(seqs, clocks, final, encoded)
        rows = None
        for dst, seq in seqs.items():
            if encoded[0]["tables"] and self.wants_barrier(dst):
                if rows is None:
                    rows = encode_indices(rows_of(update, shapes))
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


class Acks:
    """The gaia.acks a receiver owes, one frame per update acknowledged when flushed (not
    one per sender and commit: how many updates a commit covers depends on timing, and
    the run's WAN bytes would with it)."""

    def __init__(self) -> None:
        self._owed: dict[str, list[int]] = {}

    def owe(self, msg: Message, seq: int) -> None:
        if msg.meta.get("ack"):
            self._owed.setdefault(msg.src, []).append(seq)

    async def flush(self, ep: Sends) -> None:
        owed, self._owed = self._owed, {}
        for src, seqs in owed.items():
            for seq in seqs:
                await ep.send(src, ACK, control=True, meta={"seqs": [seq]})


class Deferred:
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


async def serve_until(ep: Endpoint, counters: Counter[str],
                       handle: Callable[[Message], Awaitable[None]],
                       done: Callable[[], bool]) -> None:
    """Handle frames until `done()`; a frame that cannot be handled is logged and counted
    as refused, and serving goes on."""
    while not done():
        await handle_or_refuse(ep, counters, handle, await ep.recv())


async def handle_or_refuse(ep: Endpoint, counters: Counter[str],
                            handle: Callable[[Message], Awaitable[None]],
                            msg: Message) -> None:
    """`handle(msg)`; a frame it cannot handle is logged and counted as refused."""
    try:
        await handle(msg)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        counters["refused"] += 1
        log.warning("%s refused %s from %s: %s", ep.address, msg.type, msg.src, exc)


#: A checkpointing role commits after at most this many frames handled.
COMMIT_BATCH = 64


async def serve_in_batches(ep: Endpoint, counters: Counter[str],
                           handle: Callable[[Message], Awaitable[None]],
                           done: Callable[[], bool], commit: Callable[[], Awaitable[None]],
                           idle: Callable[[], None] | None = None) -> None:
    """Handle frames until `done()`, calling `commit()` after each batch (the inbox empty,
    or COMMIT_BATCH frames) and once at the end: a checkpointing role's group commit.
    With `idle`, wait at most a second for each frame, calling `idle()` before each wait."""
    batch = 0
    while not done():
        if idle is not None:
            idle()
            try:
                msg = await ep.recv(timeout=1.0)
            except TimeoutError:
                continue
        else:
            msg = await ep.recv()
        await handle_or_refuse(ep, counters, handle, msg)
        batch += 1
        if batch >= COMMIT_BATCH or not ep.pending:
            await commit()
            batch = 0
    await commit()


def peer_meta(msg: Message) -> tuple[int, dict[str, int], list[str]]:
    """(seq, clocks, final) of a mirror-to-mirror gaia.update, validated."""
    seq, clocks, final = msg.meta.get("seq"), msg.meta.get("clocks"), msg.meta.get("final")
    if not isinstance(seq, int) or not isinstance(clocks, dict) or not isinstance(final, list):
        raise ValueError(f"{msg.type} from {msg.src} needs meta seq, clocks and final")
    return seq, {str(r): int(c) for r, c in clocks.items()}, [str(r) for r in final]
