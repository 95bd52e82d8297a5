"""Cartel's metadata service: what each peer knows, and its logical neighbours.

Peers report small metadata (class counts over their whole stream and over a recent window,
samples seen, model version and size, mean of their features, which a peer sends only when
they moved; the service keeps the last it got). Asked for the neighbours of
node N needing classes K, the service returns peers that know some of K, ranked by how many
of K they know and then by the Jensen-Shannon divergence between their class priors and
the priors N sends with the question.

Frames (docs/PROTOCOL.md, "Cartel"):
  cartel.report      peer -> service  meta {classes, counts, recent, samples, version,
                                      model_bytes, next_within_s}; arrays [feature mean
                                      (float16)] or none (unchanged)
  cartel.lookup      peer -> service  meta {id, need, priors, k}
  cartel.neighbours  service -> peer  meta {id, need, neighbours: [[address, js, knows,
                                      classes], ...]} (knows: of need; classes: all it holds)
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoml.bus import Endpoint, Message

from .dispatch import dispatch
from .inbox import messages

log = logging.getLogger("geoml.roles.metadata")

REPORT, LOOKUP, NEIGHBOURS = "cartel.report", "cartel.lookup", "cartel.neighbours"


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, so in [0, 1]) of two count or probability vectors."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
        raise ValueError("JS divergence needs two non-negative, non-zero vectors of one shape")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


@dataclass
class PeerRecord:
    """The latest report of one peer."""

    address: str
    counts: np.ndarray  # samples per class over the whole stream
    recent: np.ndarray  # samples per class over the recent window
    samples: int
    version: int
    model_bytes: int
    classes: frozenset[int]  # classes its model holds
    feature_mean: np.ndarray
    reported_at: float
    next_within_s: float = 0.0  # the peer's next heartbeat comes within this (0: unknown)


class MetadataTable:
    """The service's state (sans-I/O): reports in, ranked neighbours out."""

    def __init__(self, n_classes: int, stale_after_s: float = 60.0,
                 min_class_samples: int = 20) -> None:
        self.n_classes = n_classes
        self.stale_after_s = stale_after_s
        #: A peer "knows" a class when its model holds it and it saw this many samples.
        self.min_class_samples = min_class_samples
        self.peers: dict[str, PeerRecord] = {}

    def report(self, record: PeerRecord) -> None:
        """Store a peer's latest report (one without feature means keeps the last ones)."""
        if record.counts.shape != (self.n_classes,) or record.recent.shape != (self.n_classes,):
            raise ValueError(f"class counts must have {self.n_classes} entries")
        last = self.peers.get(record.address)
        if record.feature_mean.size == 0 and last is not None:
            record.feature_mean = last.feature_mean
        self.peers[record.address] = record

    def is_stale(self, record: PeerRecord, now: float) -> bool:
        """No report for `stale_after_s`, or for twice the heartbeat the peer announced
        when that is longer: a peer that backed off is not taken for a dead one."""
        return now - record.reported_at > max(self.stale_after_s, 2 * record.next_within_s)

    def knows(self, record: PeerRecord, cls: int) -> bool:
        """Whether `record`'s peer can teach class `cls`."""
        return cls in record.classes and record.counts[cls] >= self.min_class_samples

    def neighbours(self, asker: str, need: Sequence[int], priors: np.ndarray, k: int,
                   now: float) -> list[tuple[str, float, list[int], list[int]]]:
        """Up to `k` (address, JS divergence, classes of `need` it knows, classes it
        holds), best first."""
        ranked = []
        for rec in self.peers.values():
            if rec.address == asker or self.is_stale(rec, now):
                continue
            knows = [c for c in need if self.knows(rec, c)]
            if not knows:
                continue
            basis = rec.recent if rec.recent.sum() > 0 else rec.counts
            ranked.append((-len(knows), js_divergence(priors, basis), rec.address, knows,
                           sorted(rec.classes)))
        ranked.sort()
        return [(addr, js, knows, held) for _, js, addr, knows, held in ranked[:k]]


class MetadataService:
    """The coroutine around a MetadataTable: answers lookups, stores reports."""

    def __init__(self, endpoint: Endpoint, table: MetadataTable) -> None:
        self.ep = endpoint
        self.table = table
        self.counters: Counter[str] = Counter()
        #: Frame type -> handler; a process shell may add its own (roles/edge_start.py).
        self.handlers = {REPORT: self._on_report, LOOKUP: self._on_lookup}

    async def _on_report(self, msg: Message) -> None:
        self.table.report(self._record(msg, asyncio.get_running_loop().time()))
        self.counters["reports"] += 1

    async def _on_lookup(self, msg: Message) -> None:
        await self._answer(msg, asyncio.get_running_loop().time())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (or the endpoint closes)."""
        async for msg in messages(self.ep, stop):
            try:
                await dispatch(self.handlers, msg, "the metadata service")
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src, exc)

    def _record(self, msg: Message, now: float) -> PeerRecord:
        m = msg.meta
        counts = np.asarray(m["counts"], np.int64)
        recent = np.asarray(m["recent"], np.int64)
        classes = frozenset(int(c) for c in m["classes"])
        if any(not 0 <= c < self.table.n_classes for c in classes):
            raise ValueError(f"class ids must be below {self.table.n_classes}")
        mean = msg.arrays[0] if msg.arrays else np.zeros(0, np.float16)
        next_within = float(m.get("next_within_s", 0.0))
        if not 0 <= next_within < float("inf"):
            raise ValueError(f"next_within_s must be a finite number >= 0, got {next_within}")
        return PeerRecord(msg.src, counts, recent, int(m["samples"]), int(m["version"]),
                          int(m["model_bytes"]), classes, mean, now, next_within)

    async def _answer(self, msg: Message, now: float) -> None:
        need = [int(c) for c in msg.meta["need"]]
        priors = np.asarray(msg.meta["priors"], np.float64)
        if priors.shape != (self.table.n_classes,):
            raise ValueError(f"priors must have {self.table.n_classes} entries")
        found = self.table.neighbours(msg.src, need, priors, int(msg.meta.get("k", 2)), now)
        self.counters["lookups"] += 1
        if not found:
            self.counters["lookups_unanswered"] += 1
        await self.ep.send(msg.src, NEIGHBOURS, meta={
            "id": msg.meta.get("id"), "need": need,
            "neighbours": [[a, round(js, 6), knows, held] for a, js, knows, held in found]})
