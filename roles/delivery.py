"""Exactly-once delivery between Gaia's mirrors and hubs, sans I/O: the receiver's record of
the sequence numbers it has (`SeqWindow`), and the sender's record of what it sent and has
not had acknowledged (`Outbox`).

A sender numbers its updates per destination 1, 2, 3, ...; a hub may deliver them out of
order (a barrier reserves its update's number before later updates overtake it), so the
receiver keeps every number above the highest contiguous one it has. A sender that asked for
acknowledgements keeps each update until its destination says it has it in a checkpoint;
when either end restarts, the sender sends again what it keeps and the receiver drops what
it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Encoded = tuple[dict[str, Any], list[np.ndarray]]


class SeqWindow:
    """The sequence numbers received from one sender: all up to `base`, plus `above`."""

    def __init__(self, base: int = 0, above: Iterable[int] = ()) -> None:
        self.base = base
        self.above = set(above)

    def __contains__(self, seq: int) -> bool:
        return seq <= self.base or seq in self.above

    def add(self, seq: int) -> bool:
        """Record `seq`; False when it was had already (a duplicate)."""
        if seq < 1:
            raise ValueError(f"sequence numbers start at 1, got {seq}")
        if seq in self:
            return False
        self.above.add(seq)
        while self.base + 1 in self.above:
            self.base += 1
            self.above.remove(self.base)
        return True

    def state(self) -> list[Any]:
        """JSON-able form, for a checkpoint."""
        return [self.base, sorted(self.above)]

    @classmethod
    def from_state(cls, state: list[Any]) -> SeqWindow:
        return cls(int(state[0]), (int(s) for s in state[1]))


@dataclass
class Sent:
    """One update sent to one or more destinations (`seqs`: destination -> its number)."""

    seqs: dict[str, int]
    clocks: dict[str, int]
    final: list[str]
    encoded: Encoded
    waiting: set[str] = field(default_factory=set)


class Outbox:
    """Updates sent and not yet acknowledged, per destination, in the order sent."""

    def __init__(self) -> None:
        self.items: list[Sent] = []

    def add(self, item: Sent) -> None:
        item.waiting = set(item.seqs)
        self.items.append(item)

    def ack(self, dst: str, seqs: Iterable[int]) -> int:
        """`dst` has these numbers; returns how many it newly acknowledged."""
        wanted, done = set(seqs), 0
        for item in self.items:
            if dst in item.waiting and item.seqs[dst] in wanted:
                item.waiting.discard(dst)
                done += 1
        self.items = [i for i in self.items if i.waiting]
        return done

    def unacked(self, dst: str) -> Iterator[tuple[int, Sent]]:
        """(seq, item) of what `dst` has not acknowledged, oldest first."""
        for item in self.items:
            if dst in item.waiting:
                yield item.seqs[dst], item

    def __len__(self) -> int:
        return len(self.items)

    def state(self, prefix: str) -> tuple[list[Any], dict[str, np.ndarray]]:
        """JSON-able form plus arrays (named under `prefix`), for a checkpoint."""
        meta, arrays = [], {}
        for i, item in enumerate(self.items):
            enc_meta, enc_arrays = item.encoded
            meta.append({"seqs": {d: s for d, s in item.seqs.items() if d in item.waiting},
                         "clocks": item.clocks, "final": item.final, "enc": enc_meta,
                         "arrays": len(enc_arrays)})
            arrays.update({f"{prefix}/{i}/{j}": a for j, a in enumerate(enc_arrays)})
        return meta, arrays

    @classmethod
    def from_state(cls, meta: list[Any], arrays: dict[str, np.ndarray],
                   prefix: str) -> Outbox:
        box = cls()
        for i, m in enumerate(meta):
            box.add(Sent({str(d): int(s) for d, s in m["seqs"].items()},
                         {str(r): int(c) for r, c in m["clocks"].items()},
                         [str(r) for r in m["final"]],
                         (m["enc"], [arrays[f"{prefix}/{i}/{j}"] for j in range(m["arrays"])])))
        return box
