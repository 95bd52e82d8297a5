"""Cartel peer (Daga et al., SoCC'19): a small local model, drift detection, partial transfer.

Each peer learns online from its own stream with a model that holds only the classes it has
seen. It reports metadata to the metadata service (when, and with what:
roles/report_policy.py). When its drift detector fires on the error stream, or a label
its model has never seen arrives, it works out which classes it lacks or now gets wrong,
asks the service for logical neighbours that know them, and pulls from the best `fanout`
neighbours only the rows of those classes plus the rows of the classes both models hold.
It merges them (missing classes inserted, shared ones averaged by sample count) and keeps
learning locally. The shared rows matter: a softmax row only means something next to the
rows it was trained against (a transferred attack row scored against the receiver's own
`normal` row recognised 13-35% of that attack on some NSL-KDD sites, against the averaged
`normal` row 85-100%).
With `collaborate=False` the same peer is the isolated baseline.

Frames (docs/PROTOCOL.md, "Cartel"), besides the metadata service's:
  cartel.pull  peer -> peer  meta {id, classes}
  cartel.rows  peer -> peer  meta {id, classes}; arrays [weights k x d (float32),
                             biases k (float32), sample counts k (int64)]
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoml.bus import BusClosed, Endpoint, Message
from geoml.workloads.streams import Encoder, SiteStream

from .dispatch import dispatch
from .drift import DETECTORS, DriftState, make_detector
from .inbox import messages
from .metadata import LOOKUP, NEIGHBOURS, REPORT
from .report_policy import ReportPolicy
from .stream_site import StreamConfig, StreamSite

log = logging.getLogger("geoml.roles.cartel")

PULL, ROWS = "cartel.pull", "cartel.rows"


@dataclass(frozen=True)
class CartelConfig:
    """When a peer asks for help, whom, and how often it reports."""

    detector: str = "ddm"
    window: int = 200  # recent records kept for priors and per-class recall
    degraded_recall: float = 0.8  # a known class below this recall (recent window) is asked for
    min_class_samples: int = 5  # recent samples of a class before its recall counts
    fanout: int = 1  # neighbours pulled from per transfer
    teach_min_samples: int = 20  # samples of a class before a peer is offered as its teacher
    report_every_s: float = 5.0  # heartbeat report, while the peer's metadata changes
    report_max_every_s: float = 30.0  # the heartbeat backs off to this while nothing changes
    report_change_js: float = 0.05  # report early when recent priors moved this much
    report_feature_change: float = 0.05  # resend feature means when they moved this much
    pull_timeout_s: float = 5.0
    collaborate: bool = True  # False: the isolated baseline

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown drift detector {self.detector!r} "
                             f"(choose from {', '.join(DETECTORS)})")
        if self.window < 1 or self.fanout < 1 or self.pull_timeout_s <= 0:
            raise ValueError("cartel needs window >= 1, fanout >= 1, pull_timeout_s > 0")
        self.report_policy()  # refuses bad report intervals and thresholds

    def report_policy(self) -> ReportPolicy:
        """A fresh report policy with these settings."""
        return ReportPolicy(self.report_every_s, self.report_max_every_s,
                            self.report_change_js, self.report_feature_change)


@dataclass
class Transfer:
    """One knowledge transfer, for the run's record."""

    trigger: str  # "drift" or "novel"
    at_record: int
    need: list[int]
    neighbours: list[str] = field(default_factory=list)
    merged: dict[str, list[int]] = field(default_factory=dict)
    bytes_in: int = 0
    done_at_record: int | None = None
    outcome: str = "pending"


class CartelPeer(StreamSite):
    """An edge site running Cartel (or, with collaborate=False, isolated learning)."""

    def __init__(self, endpoint: Endpoint, stream: SiteStream, encoder: Encoder,
                 n_classes: int, dim: int, config: StreamConfig, cartel: CartelConfig,
                 metadata: str, *, speed: float = 1.0) -> None:
        super().__init__(endpoint, stream, encoder, n_classes, dim, config, speed=speed)
        self.cartel = cartel
        self.metadata = metadata
        self.model = self.new_model()
        self.detector = make_detector(cartel.detector)
        self.counts = np.zeros(n_classes, np.int64)
        self.recent_labels: deque[int] = deque(maxlen=cartel.window)
        self.recent_hits: deque[bool] = deque(maxlen=cartel.window)
        self.feature_sum = np.zeros(dim, np.float64)
        self.transfers: list[Transfer] = []
        self._transfer_task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._waiting: dict[tuple[str, int, str], asyncio.Future[Message]] = {}
        #: Frame type -> handler; a process shell may add its own (roles/edge_start.py).
        self.handlers = {PULL: self._on_pull, NEIGHBOURS: self._on_reply, ROWS: self._on_reply}
        self.reporting = cartel.report_policy()

    # -- the stream ---------------------------------------------------------------------

    async def step(self, index: int, raw: np.ndarray, label: np.ndarray) -> None:
        """Predict, score, feed the detector, learn; maybe report or ask for help."""
        x = self.encoder(raw)
        hits = self.score(index, self.model.predict(x))
        drift = False
        for hit in hits:
            if self.detector.update(0.0 if hit else 1.0) is DriftState.DRIFT:
                drift = True
        novel = [int(c) for c in np.unique(label) if not self.model.knows(int(c))]
        await self.train(self.model, x, label)
        np.add.at(self.counts, label, 1)
        self.recent_labels.extend(int(c) for c in label)
        self.recent_hits.extend(bool(h) for h in hits)
        self.feature_sum += x.sum(axis=0)
        if drift:
            self.counters["drift_alarms"] += 1
        # the first window of records is the site's own start-up, not a change
        novel = novel if index >= self.cartel.window else []
        self.counters["novel_classes"] += len(novel)
        if not self.cartel.collaborate:
            return
        if drift or novel:
            self._ask_for_help("drift" if drift else "novel", index + len(label))
        await self._maybe_report()

    def recent_priors(self) -> np.ndarray:
        """Class counts over the recent window."""
        return np.bincount(np.fromiter(self.recent_labels, np.int64, len(self.recent_labels)),
                           minlength=self.n_classes)

    def needed_classes(self) -> list[int]:
        """Classes of the recent window the model lacks, or gets wrong too often."""
        labels = np.fromiter(self.recent_labels, np.int64, len(self.recent_labels))
        hits = np.fromiter(self.recent_hits, bool, len(self.recent_hits))
        need = []
        for c in np.unique(labels).tolist():
            mask = labels == c
            learned = self.model.class_samples(c)
            recall_low = (mask.sum() >= self.cartel.min_class_samples
                          and hits[mask].mean() < self.cartel.degraded_recall)
            if learned < self.cartel.min_class_samples or recall_low:
                need.append(c)
        return need

    # -- metadata -----------------------------------------------------------------------

    async def _maybe_report(self) -> None:
        # what the service needs to offer this peer as a teacher: the classes it can teach
        classes = frozenset(c for c in self.model.classes
                            if self.counts[c] >= self.cartel.teach_min_samples)
        seen = max(1, int(self.counts.sum()))
        features = (self.feature_sum / seen).astype(np.float16)
        recent = self.recent_priors()
        decision = self.reporting.decide(
            asyncio.get_running_loop().time(),
            len(self.recent_labels) == self.cartel.window, recent, classes,
            features.astype(np.float64))
        if not decision.send:
            return
        await self.ep.send(self.metadata, REPORT,
                           arrays=[features] if decision.features else [], meta={
            "classes": sorted(self.model.classes), "counts": self.counts.tolist(),
            "recent": recent.tolist(), "samples": int(self.counts.sum()),
            "version": self.model.version, "model_bytes": self.model.nbytes(),
            "next_within_s": decision.next_within_s})
        self.counters["reports"] += 1
        self.counters[f"reports_{decision.reason}"] += 1

    # -- asking for help ----------------------------------------------------------------

    def _ask_for_help(self, trigger: str, at_record: int) -> None:
        if self._transfer_task is not None and not self._transfer_task.done():
            self.counters["alarms_during_transfer"] += 1
            return
        need = self.needed_classes()
        if not need:
            self.counters["alarms_without_need"] += 1
            return
        transfer = Transfer(trigger, at_record, need)
        self.transfers.append(transfer)
        self._transfer_task = asyncio.get_running_loop().create_task(
            self._transfer(transfer), name=f"{self.ep.address} transfer")

    async def _transfer(self, t: Transfer) -> None:
        rid = next(self._ids)
        try:
            await self.ep.send(self.metadata, LOOKUP, meta={
                "id": rid, "need": t.need, "priors": self.recent_priors().tolist(),
                "k": self.cartel.fanout})
            answer = await self._expect(NEIGHBOURS, rid, self.metadata)
            found = []
            for address, _js, knows, held in answer.meta["neighbours"]:
                shared = [c for c in self.model.classes if c in held and c not in knows]
                found.append((str(address), [int(c) for c in knows] + shared))
            if not found:
                t.outcome = "no_neighbour"
                self.counters["transfers_without_neighbour"] += 1
                return
            t.neighbours = [a for a, _ in found]
            for address, knows in found:
                await self.ep.send(address, PULL, meta={"id": rid, "classes": knows})
            replies = await asyncio.gather(
                *(self._expect(ROWS, rid, a) for a, _ in found), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    self.counters["pull_timeouts"] += 1
                    continue
                await self._merge(t, reply)
            t.outcome = "merged" if t.merged else "nothing_merged"
            self.counters["transfers"] += 1
        except TimeoutError:
            t.outcome = "metadata_timeout"
            self.counters["lookup_timeouts"] += 1
        except BusClosed:
            t.outcome = "closed"
        finally:
            t.done_at_record = self.position

    async def _merge(self, t: Transfer, msg: Message) -> None:
        try:
            classes = [int(c) for c in msg.meta["classes"]]
            weights, bias, counts = msg.arrays
            merged = await self.compute.run(self.model.merge, classes, weights, bias,
                                            counts.astype(np.int64), examples=len(classes))
        except (KeyError, ValueError, TypeError) as exc:
            self.counters["refused"] += 1
            log.warning("%s refused rows from %s: %s", self.ep.address, msg.src, exc)
            return
        for kind, cls in merged.items():
            t.merged.setdefault(kind, []).extend(cls)
        t.bytes_in += msg.nbytes
        self.counters["rows_received"] += len(classes)

    async def _expect(self, ftype: str, rid: int, src: str) -> Message:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[(ftype, rid, src)] = future
        try:
            return await asyncio.wait_for(future, self.cartel.pull_timeout_s)
        finally:
            self._waiting.pop((ftype, rid, src), None)

    # -- serving ------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer pulls and route replies until `stop` is set."""
        async for msg in messages(self.ep, stop):
            try:
                await dispatch(self.handlers, msg, "a Cartel peer")
            except (KeyError, ValueError, TypeError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src,
                            exc)

    async def _on_pull(self, msg: Message) -> None:
        classes = [int(c) for c in msg.meta["classes"]]
        held, weights, bias, counts = self.model.export(classes)
        await self.ep.send(msg.src, ROWS, arrays=[weights, bias, counts],
                           meta={"id": msg.meta["id"], "classes": held})
        self.counters["pulls_served"] += 1

    async def _on_reply(self, msg: Message) -> None:
        future = self._waiting.get((msg.type, msg.meta.get("id"), msg.src))
        if future is None or future.done():
            self.counters["late_replies"] += 1
            return
        future.set_result(msg)

    async def wait_transfers(self, timeout: float) -> None:
        """Let an in-flight transfer finish (bounded)."""
        if self._transfer_task is not None and not self._transfer_task.done():
            await asyncio.wait({self._transfer_task}, timeout=timeout)

    def summary(self) -> dict[str, Any]:
        """Counters, model size and transfers, for cartel.json."""
        return {"classes": list(self.model.classes), "model_bytes": self.model.nbytes(),
                "compute_s": self.compute_s, "counters": dict(self.counters),
                "transfers": [vars(t) for t in self.transfers]}
