"""An edge site's paced, prequential stream loop (the shell the Cartel roles share).

Records arrive at `rate` per second in loop time; every `batch` records the site first
predicts them (the prediction is scored), then learns from them. What "predict" and "learn"
mean is the subclass's business: a local model (cartel, isolated, fedavg) or shipping the
raw records to the cloud (centralized, scored there).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from geoml.bus import Endpoint
from geoml.workloads.online import OnlineSoftmax
from geoml.workloads.streams import Encoder, SiteStream

from .compute import Compute, ComputeCost


@dataclass(frozen=True)
class StreamConfig:
    """Pace and learning settings every system shares."""

    rate: float = 200.0  # records per second arriving at each site
    batch: int = 10  # records predicted, then learned, together
    lr: float = 0.1  # SGD step of the online models
    l2: float = 1e-4
    compute: ComputeCost = field(default_factory=ComputeCost)  # charge under virtual time

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.batch < 1 or self.lr <= 0 or self.l2 < 0:
            raise ValueError("stream settings need rate > 0, batch >= 1, lr > 0, l2 >= 0")


class StreamSite:
    """Paces a SiteStream and records which predictions were right."""

    def __init__(self, endpoint: Endpoint, stream: SiteStream, encoder: Encoder,
                 n_classes: int, dim: int, config: StreamConfig, *, speed: float = 1.0) -> None:
        self.ep = endpoint
        self.stream = stream
        self.encoder = encoder
        self.n_classes = n_classes
        self.dim = dim
        self.config = config
        self.correct = np.zeros(len(stream), bool)
        self.position = 0  # records processed so far
        # training and merging: inline (one core per site), charged under virtual time
        self.compute = Compute(inline=True, speed=speed, cost=config.compute)
        self.counters: Counter[str] = Counter()
        self.finished = asyncio.Event()

    def new_model(self, classes: tuple[int, ...] = ()) -> OnlineSoftmax:
        """An empty online model with this run's settings."""
        return OnlineSoftmax(self.dim, self.config.lr, self.config.l2, classes)

    @property
    def compute_s(self) -> float:
        """Seconds spent training and merging (not predicting): thread CPU time, or what
        virtual time charged for it."""
        return self.compute.busy_s

    async def train(self, model: OnlineSoftmax, x: np.ndarray, y: np.ndarray) -> list[int]:
        """model.learn, its time charged to this site."""
        return await self.compute.run(model.learn, x, y, examples=len(y))

    def score(self, index: int, predicted: np.ndarray) -> np.ndarray:
        """Record predictions for records [index, index + len); returns the hit mask."""
        hits = predicted == self.stream.label[index:index + len(predicted)]
        self.correct[index:index + len(hits)] = hits
        return hits

    async def run_stream(self, t0: float) -> None:
        """Process the stream batch by batch, each once its last record has arrived."""
        loop = asyncio.get_running_loop()
        n, b, rate = len(self.stream), self.config.batch, self.config.rate
        try:
            for i in range(0, n, b):
                j = min(n, i + b)
                wait = t0 + j / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # pacing: the records are not there yet
                await self.step(i, self.stream.raw[i:j], self.stream.label[i:j])
                self.position = j
        finally:
            self.finished.set()

    async def step(self, index: int, raw: np.ndarray, label: np.ndarray) -> None:
        """Handle records [index, index + len(label))."""
        raise NotImplementedError
