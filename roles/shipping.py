"""Moving raw training data between regions (the centralized system's first phase).

Frames (docs/PROTOCOL.md, "Raw data"):
  data.chunk  shipper -> collector  raw; meta {columns, rows}; one array per column, rows
                                    consecutive records of the shipper's region.
  data.end    shipper -> collector  meta {chunks, rows}: everything was sent (data priority,
                                    so it arrives after the chunks).
  data.ack    collector -> shipper  meta {rows}: all of it arrived.
A router refuses `data.chunk` from a sovereign region to any other region; the shipper
sees that refusal and fails with the router's message instead of waiting for an ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message

from .dispatch import UnknownFrame, dispatch

log = logging.getLogger("geoml.roles.shipping")

CHUNK, END, ACK = "data.chunk", "data.end", "data.ack"
#: Target size of one data.chunk frame: big enough to amortise headers, small enough to
#: keep a WAN link's queue (and the pause/resume it triggers) in play.
CHUNK_BYTES = 1 << 20


class ShippingFailed(GeomlError):
    """Raw data could not be moved (a router refused it, or nobody acknowledged it)."""


def chunk_records(records: Sequence[Mapping[str, np.ndarray]],
                  chunk_bytes: int = CHUNK_BYTES) -> list[dict[str, np.ndarray]]:
    """Cut record sets (same columns) into pieces of about `chunk_bytes` each."""
    pieces = []
    for rec in records:
        n = len(next(iter(rec.values()))) if rec else 0
        if n == 0:
            continue
        row_bytes = sum(a[:1].nbytes for a in rec.values()) or 1
        step = max(1, chunk_bytes // row_bytes)
        for start in range(0, n, step):
            pieces.append({c: a[start:start + step] for c, a in rec.items()})
    return pieces


class DataShipper:
    """Sends one region's raw records to the collector and waits for its acknowledgement."""

    def __init__(self, endpoint: Endpoint, records: Sequence[Mapping[str, np.ndarray]],
                 collector: str, *, ack_timeout_s: float = 3600.0) -> None:
        self.ep = endpoint
        self.records = records
        self.collector = collector
        self.ack_timeout_s = ack_timeout_s
        self.counters: Counter[str] = Counter()

    async def run(self) -> int:
        """Ship everything; returns the number of records the collector confirmed."""
        errors_before = self.ep.counters["errors"]
        rows = 0
        chunks = chunk_records(self.records)
        for piece in chunks:
            columns = sorted(piece)
            n = len(piece[columns[0]])
            await self.ep.send(self.collector, CHUNK, raw=True, arrays=[piece[c] for c in columns],
                               meta={"columns": columns, "rows": n})
            rows += n
            self.counters["chunks"] += 1
            self.counters["rows"] += n
            self._raise_if_refused(errors_before)
        await self.ep.send(self.collector, END, meta={"chunks": len(chunks), "rows": rows})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while True:
            try:
                msg = await self.ep.recv(timeout=min(0.5, max(0.0, deadline - loop.time())))
            except TimeoutError:
                self._raise_if_refused(errors_before)
                if loop.time() >= deadline:
                    raise ShippingFailed(f"{self.ep.address}: {self.collector} did not "
                                         f"acknowledge {rows} records within "
                                         f"{self.ack_timeout_s:.0f}s") from None
                continue
            if msg.type == ACK and msg.src == self.collector:
                # A refusal of a chunk reaches us before the ack of the end that followed it.
                self._raise_if_refused(errors_before)
                confirmed = int(msg.meta.get("rows", -1))
                if confirmed != rows:
                    raise ShippingFailed(f"{self.ep.address}: {self.collector} confirmed "
                                         f"{confirmed} records, {rows} were sent")
                return rows
            self.counters["unexpected"] += 1
            log.warning("%s: ignored an unexpected %s from %s", self.ep.address, msg.type,
                        msg.src)

    def _raise_if_refused(self, errors_before: int) -> None:
        if self.ep.counters["errors"] > errors_before:
            error = self.ep.errors[-1]
            raise ShippingFailed(f"{self.ep.address}: the bus refused the raw data "
                                 f"({error.get('reason')}): {error.get('detail')}")


class DataCollector:
    """Receives raw records from every shipper; `run()` returns them per source address."""

    def __init__(self, endpoint: Endpoint, shippers: Sequence[str],
                 columns: Sequence[str]) -> None:
        self.ep = endpoint
        self.shippers = set(shippers)
        self.columns = sorted(columns)
        self.received: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in shippers}
        self.counters: Counter[str] = Counter()
        self._pending: set[str] = set()
        self._handlers = {CHUNK: self._on_chunk, END: self._on_end}

    async def run(self) -> dict[str, list[dict[str, np.ndarray]]]:
        """Collect until every shipper has ended; frames from strangers are refused."""
        self._pending = set(self.shippers)
        while self._pending:
            msg = await self.ep.recv()
            if msg.src not in self.shippers:
                self._refuse(msg, "not a shipper of this run")
                continue
            try:
                await dispatch(self._handlers, msg, "a collector")
            except UnknownFrame as exc:
                self._refuse(msg, str(exc))
        return self.received

    async def _on_chunk(self, msg: Message) -> None:
        problem = self._check_chunk(msg)
        if problem:
            self._refuse(msg, problem)
            return
        self.received[msg.src].append(
            {c: a.copy() for c, a in zip(self.columns, msg.arrays, strict=True)})
        self.counters["chunks"] += 1
        self.counters["bytes"] += msg.nbytes

    async def _on_end(self, msg: Message) -> None:
        rows = sum(len(p[self.columns[0]]) for p in self.received[msg.src])
        self._pending.discard(msg.src)
        await self.ep.send(msg.src, ACK, meta={"rows": rows})

    def _check_chunk(self, msg: Message) -> str | None:
        if not msg.raw:
            return "a data.chunk must be marked raw"
        if msg.meta.get("columns") != self.columns or len(msg.arrays) != len(self.columns):
            return f"columns {msg.meta.get('columns')} are not {self.columns}"
        lengths = {len(a) for a in msg.arrays}
        if len(lengths) != 1 or lengths != {msg.meta.get("rows")}:
            return "columns of a chunk differ in length from its rows"
        return None

    def _refuse(self, msg: Message, why: str) -> None:
        self.counters["refused"] += 1
        log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src, why)
