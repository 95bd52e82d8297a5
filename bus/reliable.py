"""Frames that survive a router restart, sans I/O: what a sender keeps until its destination
has the frame (`SendLog`), and how the destination puts frames back in order and drops the
copies a resend makes (`ReceiveOrder`).

A router that dies loses every frame in its queues. An endpoint in reliable mode therefore
numbers its frames per (destination, priority class) 1, 2, 3, ... and keeps each one until
the destination's endpoint acknowledges it (bus.ack). When a router restarts, every endpoint
that may have had frames in it sends again what it keeps (its own router: on reconnecting;
any other: on the bus.resend its router sends it). The receiver delivers each class of each
sender in order, exactly once: a frame above a gap waits for the gap to fill, a copy of a
frame it has is dropped and acknowledged again.

Every frame also carries the sender's *floor*: the lowest number it still keeps for that
destination and class. Everything below the floor is settled (acknowledged, or given up
because a router refused it or because the destination restarted and the frame died with
its last process), so the receiver never waits for it. A restarted process is a new
*incarnation* (a random number): numbering starts again, and the other end can tell.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Windows kept per sender and class: the current incarnation and a few before it (frames
#: of a dead process may still be on their way when its successor's arrive).
_INCARNATIONS_KEPT = 3


def new_incarnation() -> int:
    """A random 62-bit number naming one process's endpoint (fits msgpack's uint64)."""
    return secrets.randbits(62) | 1


@dataclass(slots=True)
class Kept:
    """A frame sent and not yet acknowledged by its destination."""

    dst: str
    cls: int
    seq: int
    parts: list[Any]
    size: int
    to_incarnation: int | None = None  # the destination's, as known when sent
    frame_seq: int = 0  # the header's seq (bus.error names a refused frame by it)


class SendLog:
    """The sender's side: numbering, the frames kept, and what acks and refusals settle."""

    def __init__(self, incarnation: int | None = None) -> None:
        self.incarnation = incarnation if incarnation is not None else new_incarnation()
        self._next: dict[tuple[str, int], int] = {}
        self._kept: dict[tuple[str, int], dict[int, Kept]] = {}
        self._by_frame_seq: dict[int, Kept] = {}
        self._dst_incarnation: dict[str, int] = {}
        self._highest_acked: dict[tuple[str, int], int] = {}
        self.kept_bytes = 0
        self.abandoned = 0

    def number(self, dst: str, cls: int) -> tuple[int, int]:
        """The next number towards (dst, cls) and the floor to send with it (the number is
        taken by `keep`, so a frame refused before it is sent leaves no gap)."""
        return self._next.get((dst, cls), 1), self.floor(dst, cls)

    def keep(self, frame_seq: int, item: Kept) -> None:
        """Keep `item` (numbered by `number` just before) until acknowledged; `frame_seq` is
        the header's seq (bus.error names a refused frame by it)."""
        key = (item.dst, item.cls)
        if item.seq != self._next.get(key, 1):
            raise ValueError(f"frame {item.seq} to {item.dst} is not the next number")
        self._next[key] = item.seq + 1
        item.to_incarnation = self._dst_incarnation.get(item.dst)
        item.frame_seq = frame_seq
        self._kept.setdefault(key, {})[item.seq] = item
        self._by_frame_seq[frame_seq] = item
        self.kept_bytes += item.size

    @property
    def kept(self) -> int:
        """Frames kept."""
        return len(self._by_frame_seq)

    def all_kept(self) -> Iterator[Kept]:
        """Everything kept, in number order per destination and class (for a resend)."""
        for kept in list(self._kept.values()):
            yield from list(kept.values())

    def is_kept(self, item: Kept) -> bool:
        """Still waiting for its ack?"""
        return item.seq in self._kept.get((item.dst, item.cls), {})

    def floor(self, dst: str, cls: int) -> int:
        """The lowest number still kept towards (dst, cls) (the next one if none)."""
        kept = self._kept.get((dst, cls))
        return next(iter(kept)) if kept else self._next.get((dst, cls), 1)

    def _settle(self, dst: str, cls: int, seq: int) -> bool:
        kept = self._kept.get((dst, cls))
        item = kept.pop(seq, None) if kept else None
        if item is None:
            return False
        self.kept_bytes -= item.size
        del self._by_frame_seq[item.frame_seq]
        return True

    def acked(self, dst: str, incarnation: int, acks: list[tuple[int, list[int]]]
              ) -> list[tuple[int, int]]:
        """`dst` (incarnation `incarnation`) has these (class, numbers). Returns the floors
        to tell it, [(class, floor)], when this shows that it restarted.

        A class is delivered in order, so when a destination acknowledges `m`, every frame
        below `m` that it will ever get has come. Those below `m` that were sent to an
        earlier incarnation of it and are not acknowledged died with that process: they
        are given up (the roles' own restart protocols replay what matters), and the floor
        tells the new process not to wait for them. Frames sent before the first ack from
        `dst` count as sent to the incarnation that first acknowledges (one that dies
        before acknowledging anything leaves its successor waiting: see docs/PROTOCOL.md).
        """
        if dst not in self._dst_incarnation:
            for (to, _cls), kept in self._kept.items():
                if to == dst:
                    for item in kept.values():
                        item.to_incarnation = incarnation
        self._dst_incarnation[dst] = incarnation
        floors = []
        for cls, seqs in acks:
            if not seqs:
                continue
            first = min(seqs)
            dead = [s for s, item in self._kept.get((dst, cls), {}).items() if s < first
                    and item.to_incarnation is not None and item.to_incarnation != incarnation]
            for seq in dead:
                self._settle(dst, cls, seq)
                self.abandoned += 1
            for seq in seqs:
                self._settle(dst, cls, seq)
            key = (dst, cls)
            self._highest_acked[key] = max(self._highest_acked.get(key, 0), max(seqs))
            if dead:
                floors.append((cls, self.floor(dst, cls)))
        return floors

    def gaps(self) -> list[Kept]:
        """Frames kept below one their destination has acknowledged. A class is delivered
        in order, so such a frame was lost (in a router that died, and not yet resent) or
        died with a destination that never acknowledged anything: either way sending it
        again is what fills the gap the receiver waits on."""
        out = []
        for key, kept in self._kept.items():
            top = self._highest_acked.get(key, 0)
            if kept and next(iter(kept)) < top:  # kept is in number order: most have none
                out.extend(item for seq, item in kept.items() if seq < top)
        return out

    def refused(self, frame_seq: int) -> tuple[str, int, int] | None:
        """A router refused the frame sent with header seq `frame_seq`: stop keeping it.
        Returns (dst, class, floor) to tell the destination, or None if it was not kept."""
        item = self._by_frame_seq.get(frame_seq)
        if item is None:
            return None
        self._settle(item.dst, item.cls, item.seq)
        self.abandoned += 1
        return item.dst, item.cls, self.floor(item.dst, item.cls)


class _Window:
    """One sender's class, one incarnation: delivered up to `base`, and frames held above."""

    __slots__ = ("base", "held")

    def __init__(self, base: int) -> None:
        self.base = base
        self.held: dict[int, Any] = {}


class ReceiveOrder:
    """The receiver's side: exactly once, in order, per (sender, incarnation, class)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], OrderedDict[int, _Window]] = {}
        self.duplicates = 0

    @property
    def held(self) -> int:
        """Frames waiting for a gap now."""
        return sum(len(w.held) for incs in self._windows.values() for w in incs.values())

    def _window(self, src: str, cls: int, incarnation: int, floor: int) -> _Window:
        incs = self._windows.setdefault((src, cls), OrderedDict())
        window = incs.get(incarnation)
        if window is None:
            window = incs[incarnation] = _Window(floor - 1)
            while len(incs) > _INCARNATIONS_KEPT:
                incs.popitem(last=False)
        return window

    def accept(self, src: str, cls: int, incarnation: int, seq: int, floor: int,
               item: Any) -> list[Any] | None:
        """A frame arrived. Returns the frames now deliverable in order (maybe none, when it
        waits for a gap), or None when it is a copy of one already had."""
        window = self._window(src, cls, incarnation, floor)
        if seq <= window.base or seq in window.held:
            self.duplicates += 1
            return None
        window.held[seq] = item
        return self._advance(window, floor)

    def raise_floor(self, src: str, cls: int, incarnation: int, floor: int) -> list[Any]:
        """The sender settled everything below `floor`: stop waiting for it."""
        incs = self._windows.get((src, cls))
        window = incs.get(incarnation) if incs else None
        if window is None:
            return []
        return self._advance(window, floor)

    def _advance(self, window: _Window, floor: int) -> list[Any]:
        out = []
        if floor - 1 > window.base:
            # Below the floor nothing more will come: what waits there goes out, in order.
            for seq in sorted(s for s in window.held if s < floor):
                out.append(window.held.pop(seq))
            window.base = floor - 1
        while window.base + 1 in window.held:
            window.base += 1
            out.append(window.held.pop(window.base))
        return out
