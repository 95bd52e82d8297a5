"""The baselines Cartel is compared with, on the same paced streams.

- centralized: each site ships its raw records to one trainer in the cloud (`cartel.raw`
  frames, marked raw); the trainer scores each record with the global model as it arrives,
  then learns from it.
- fedavg: each site trains a local copy of the global model (every class) on its stream;
  after `round_batches` batches it sends its delta to the FedAggregator (roles/fedavg.py),
  and adopts each new global model, keeping the local progress made since its last update.

Frames: cartel.raw  site -> trainer  meta {site, index}; arrays [raw records, labels] (raw)
        fed.model / fed.update / fed.done as in roles/fedavg.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import numpy as np

from geoml.bus import Endpoint, Message
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import Encoder, SiteStream

from .compute import Compute
from .fedavg import DONE, MODEL, UPDATE
from .inbox import messages
from .stream_site import StreamConfig, StreamSite

log = logging.getLogger("geoml.roles.edge_baselines")

RAW = "cartel.raw"


class CentralizedSite(StreamSite):
    """Ships every batch of raw records to the cloud trainer; learns nothing itself."""

    def __init__(self, endpoint: Endpoint, stream: SiteStream, encoder: Encoder,
                 n_classes: int, dim: int, config: StreamConfig, trainer: str, *,
                 speed: float = 1.0) -> None:
        super().__init__(endpoint, stream, encoder, n_classes, dim, config, speed=speed)
        self.trainer = trainer

    async def step(self, index: int, raw: np.ndarray, label: np.ndarray) -> None:
        """Send the records as they are (scored at the trainer)."""
        await self.ep.send(self.trainer, RAW, arrays=[raw, label.astype(np.int8)],
                           meta={"site": self.stream.site, "index": index}, raw=True)
        self.counters["records_shipped"] += len(label)


class CentralTrainer:
    """One global model in the cloud, trained on every site's shipped records."""

    def __init__(self, endpoint: Endpoint, streams: list[SiteStream], encoder: Encoder,
                 n_classes: int, dim: int, config: StreamConfig, *, speed: float = 1.0) -> None:
        self.ep = endpoint
        self.encoder = encoder
        self.model = OnlineSoftmax(dim, config.lr, config.l2)
        self.correct = {s.site: np.zeros(len(s), bool) for s in streams}
        self.scored = {s.site: np.zeros(len(s), bool) for s in streams}
        self.missing = sum(len(s) for s in streams)  # records not scored yet
        self.complete = asyncio.Event()  # set once every record of every stream is scored
        self.compute = Compute(inline=True, speed=speed, cost=config.compute)
        self.delay_s: list[float] = []  # send -> arrival of each batch
        self.counters: Counter[str] = Counter()
        self.n_classes = n_classes

    async def run(self, stop: asyncio.Event) -> None:
        """Take batches until `stop` is set."""
        loop = asyncio.get_running_loop()
        async for msg in messages(self.ep, stop):
            try:
                x, label = self._take(msg)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src,
                            exc)
                continue
            if msg.sent_at is not None:
                self.delay_s.append(loop.time() - msg.sent_at)
            await self.compute.run(self.model.learn, x, label, examples=len(label))
            self.counters["records"] += len(label)

    @property
    def compute_s(self) -> float:
        """Seconds spent training (as StreamSite.compute_s)."""
        return self.compute.busy_s

    def _take(self, msg: Message) -> tuple[np.ndarray, np.ndarray]:
        """Score a shipped batch; returns it (encoded) for learning."""
        if msg.type != RAW:
            raise ValueError(f"unexpected frame type {msg.type!r}")
        site, index = int(msg.meta["site"]), int(msg.meta["index"])
        raw, label = msg.arrays
        label = label.astype(np.int64)
        if site not in self.correct or not 0 <= index <= len(self.correct[site]) - len(label) \
                or len(raw) != len(label) or label.min() < 0 or label.max() >= self.n_classes:
            raise ValueError(f"batch for site {site} at {index} does not fit its stream")
        x = self.encoder(raw)
        self.correct[site][index:index + len(label)] = self.model.predict(x) == label
        fresh = int((~self.scored[site][index:index + len(label)]).sum())
        self.scored[site][index:index + len(label)] = True
        self.missing -= fresh
        if self.missing == 0:
            self.complete.set()
        return x, label


class FedShapes:
    """The table shapes FedAggregator needs, for an OnlineSoftmax over every class."""

    def __init__(self, n_classes: int, dim: int) -> None:
        self.n_classes, self.dim = n_classes, dim

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        """weights (classes x dim) and bias (classes x 1)."""
        return {"weights": (self.n_classes, self.dim), "bias": (self.n_classes, 1)}

    def init_params(self) -> dict[str, np.ndarray]:
        """Zeros."""
        return {t: np.zeros(s, np.float32) for t, s in self.table_shapes().items()}


class FedStreamSite(StreamSite):
    """A fedavg client that learns on its stream between rounds."""

    def __init__(self, endpoint: Endpoint, stream: SiteStream, encoder: Encoder,
                 n_classes: int, dim: int, config: StreamConfig, aggregator: str,
                 round_batches: int, *, speed: float = 1.0) -> None:
        super().__init__(endpoint, stream, encoder, n_classes, dim, config, speed=speed)
        self.aggregator = aggregator
        self.round_batches = round_batches
        self.model = self.new_model(tuple(range(n_classes)))
        self._base: dict[str, np.ndarray] | None = None  # the last global model adopted
        self._snapshot: dict[str, np.ndarray] | None = None  # the model at our last update
        self._round: int | None = None  # round of the model we are training on
        self._batches = 0
        self._samples = 0

    def _tables(self) -> dict[str, np.ndarray]:
        return {"weights": self.model.weights.copy(), "bias": self.model.bias[:, None].copy()}

    def _set(self, tables: dict[str, np.ndarray]) -> None:
        self.model.weights = tables["weights"].astype(np.float32)
        self.model.bias = tables["bias"][:, 0].astype(np.float32)

    async def step(self, index: int, raw: np.ndarray, label: np.ndarray) -> None:
        """Predict, score, learn; send the round's update after `round_batches` batches."""
        x = self.encoder(raw)
        self.score(index, self.model.predict(x))
        await self.train(self.model, x, label)
        self._batches += 1
        self._samples += len(label)
        if self._round is not None and self._snapshot is None and \
                self._batches >= self.round_batches:
            await self._send_update()

    async def run_stream(self, t0: float) -> None:
        """The paced stream; at its end, the update of the round in progress goes at once."""
        await super().run_stream(t0)
        if self._round is not None and self._snapshot is None:
            await self._send_update()

    async def _send_update(self) -> None:
        assert self._base is not None and self._round is not None
        now = self._tables()
        await self.ep.send(self.aggregator, UPDATE, arrays=[
            now["weights"] - self._base["weights"], now["bias"] - self._base["bias"]], meta={
            "round": self._round, "samples": self._samples, "tables": ["weights", "bias"],
            "sparse": [False, False]})
        self._snapshot = now
        self._samples = 0
        self.counters["updates"] += 1

    async def serve(self, stop: asyncio.Event) -> None:
        """Adopt each global model until fed.done or `stop`."""
        async for msg in messages(self.ep, stop):
            if msg.src != self.aggregator or msg.type not in (MODEL, DONE):
                self.counters["refused"] += 1
                log.warning("%s ignored %s from %s", self.ep.address, msg.type, msg.src)
                continue
            if msg.type == DONE:
                return
            try:
                self._adopt(msg)
            except (KeyError, ValueError, TypeError) as exc:
                self.counters["refused"] += 1
                log.warning("%s refused a fed.model: %s", self.ep.address, exc)
                continue
            if self.finished.is_set():
                await self._send_update()  # nothing more to learn: answer at once

    def _adopt(self, msg: Message) -> None:
        tables = dict(zip(msg.meta["tables"], msg.arrays, strict=True))
        if set(tables) != {"weights", "bias"} or not isinstance(msg.meta.get("round"), int):
            raise ValueError("fed.model needs a round and the weights and bias tables")
        # Keep the local progress the new model does not contain yet: since our last update,
        # or since the last model if that round closed without our update.
        carry = self._snapshot if self._snapshot is not None else self._base
        if carry is None:
            self._set(tables)
        else:
            now = self._tables()
            self._set({t: tables[t] + (now[t] - carry[t]) for t in tables})
        self._base = {t: v.copy() for t, v in tables.items()}
        self._round = int(msg.meta["round"])
        self._snapshot = None
        self._batches = 0
        self.counters["models"] += 1

    def summary(self) -> dict[str, Any]:
        """Counters and model size."""
        return {"model_bytes": self.model.nbytes(), "compute_s": self.compute_s,
                "counters": dict(self.counters)}
