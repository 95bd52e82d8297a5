"""Federated averaging (McMahan et al.): an aggregator and its clients.

Frames (docs/PROTOCOL.md, "Federated averaging"):
  fed.model      aggregator -> client  meta {round, tables[, trained]}; one array per
                                       table (the model); trained (when clients may be
                                       restarted): the rounds this client was sent a
                                       model before this one.
  fed.update     client -> aggregator  meta {round, samples, tables, sparse}; per table
                                       [rows,] delta (new - received), like ps.push.
  fed.done       aggregator -> client  no more rounds.
  fed.restarted  client -> aggregator  a new process of this client (after a crash): the
                                       aggregator sends it the open round's model again.
A client's training depends only on the model and `trained` (which passes over its data it
makes), so a restarted client's update is the one its dead process would have sent.
Raw data never moves: a client trains on its own partition only.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoml.bus import Endpoint, GeomlError, Message
from geoml.workloads import Params, Partition, Workload, take_rows

from .compute import Compute
from .ps import unpack_deltas

log = logging.getLogger("geoml.roles.fedavg")

MODEL, UPDATE, DONE, RESTARTED = "fed.model", "fed.update", "fed.done", "fed.restarted"


@dataclass(frozen=True)
class FedAvgConfig:
    """C, E and the round deadline (B is the workload's `batch` option)."""

    fraction: float = 1.0  # C: share of the clients asked each round (at least one)
    epochs: int = 1  # E: local epochs per round
    deadline_s: float = 60.0  # a client not answering within this is left out of the round
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fed-fraction must be in (0, 1], got {self.fraction}")
        if self.epochs < 1:
            raise ValueError(f"--fed-epochs must be >= 1, got {self.epochs}")
        if self.deadline_s <= 0:
            raise ValueError(f"--fed-deadline must be > 0 seconds, got {self.deadline_s}")


def select_clients(clients: Sequence[str], fraction: float, round_: int, seed: int
                   ) -> list[str]:
    """The max(1, round(C * K)) clients asked in round `round_` (seeded, in client order)."""
    k = max(1, round(fraction * len(clients)))
    chosen = np.random.default_rng([seed, round_]).choice(len(clients), k, replace=False)
    return [clients[i] for i in sorted(chosen)]


class WeightedMean:
    """Sum of sample-weighted deltas of one round (sparse rows allowed), then the mean."""

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        self.sums = {t: np.zeros(shape, np.float64) for t, shape in shapes.items()}
        self.samples = 0
        self.clients = 0

    def add(self, delta: dict[str, tuple[np.ndarray | None, np.ndarray]], samples: int) -> None:
        """Add one client's delta ({table: (rows or None, values)}) weighted by `samples`."""
        for table, (rows, values) in delta.items():
            if rows is None:
                self.sums[table] += samples * values
            else:
                self.sums[table][rows] += samples * values
        self.samples += samples
        self.clients += 1

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean delta (zeros when nobody answered)."""
        if not self.samples:
            return {t: np.zeros_like(s, np.float32) for t, s in self.sums.items()}
        return {t: (s / self.samples).astype(np.float32) for t, s in self.sums.items()}


class FedAggregator:
    """Runs rounds: send the model to C of the clients, average what comes back in time."""

    def __init__(self, endpoint: Endpoint, workload: Workload, clients: Sequence[str],
                 init: Params, config: FedAvgConfig, *, rounds: int | None = None,
                 stop: asyncio.Event | None = None,
                 on_round: Callable[[int], None] | None = None,
                 restartable: bool = False) -> None:
        if not clients:
            raise ValueError("fedavg needs at least one client")
        self.ep = endpoint
        self.shapes = workload.table_shapes()
        self.clients = list(clients)
        self.params = {t: v.copy() for t, v in init.items()}
        self.config = config
        self.rounds = rounds
        self.stop = stop or asyncio.Event()
        self.on_round = on_round
        self.round = 0
        self.counters: Counter[str] = Counter()
        #: Per client: the rounds it was sent a model in, before the open one; said in
        #: fed.model when clients may be restarted (`restartable`).
        self._trained: Counter[str] = Counter()
        self.restartable = restartable
        #: Per round: (clients asked, clients averaged).
        self.history: list[tuple[int, int]] = []

    async def run(self) -> int:
        """Run until `rounds` rounds are done or `stop` is set; returns rounds done."""
        try:
            while (self.rounds is None or self.round < self.rounds) and not self.stop.is_set():
                await self._one_round()
        finally:
            if not self.ep.closed:
                for client in self.clients:
                    await self.ep.send(client, DONE)
        return self.round

    async def _one_round(self) -> None:
        chosen = select_clients(self.clients, self.config.fraction, self.round,
                                self.config.seed)
        for client in chosen:
            await self._send_model(client)
        acc = WeightedMean(self.shapes)
        waiting = set(chosen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.deadline_s
        while waiting:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await self.ep.recv(timeout=left)
            except TimeoutError:
                break
            if msg.type == RESTARTED and msg.src in self.clients:
                await self._restarted(msg.src, waiting)
                continue
            self._take(msg, waiting, acc)
        self.counters["asked"] += len(chosen)
        self.counters["averaged"] += acc.clients
        self.counters["missed_deadline"] += len(waiting)
        if waiting:
            log.warning("%s: round %d closed at its %.1fs deadline without %s",
                        self.ep.address, self.round, self.config.deadline_s,
                        ", ".join(sorted(waiting)))
        if not acc.clients:
            self.counters["empty_rounds"] += 1
        for table, d in acc.mean().items():
            self.params[table] += d
        self.history.append((len(chosen), acc.clients))
        self._trained.update(chosen)
        self.round += 1
        if self.on_round is not None:
            self.on_round(self.round)

    async def _send_model(self, client: str) -> None:
        """This round's model to `client`, with the rounds it was sent one before."""
        tables = list(self.shapes)
        meta: dict[str, Any] = {"round": self.round, "tables": tables}
        if self.restartable:
            meta["trained"] = self._trained[client]
        await self.ep.send(client, MODEL, arrays=[self.params[t] for t in tables], meta=meta)

    async def _restarted(self, client: str, waiting: set[str]) -> None:
        """A new process of `client`: it gets the open round's model again if its update
        has not come (a copy of one it did get is answered twice; the second is refused)."""
        self.counters["client_restarts"] += 1
        if client in waiting:
            await self._send_model(client)
            self.counters["models_resent"] += 1

    def _take(self, msg: Message, waiting: set[str], acc: WeightedMean) -> None:
        if msg.type != UPDATE:
            self._refuse(msg, f"unexpected frame type {msg.type!r}")
            return
        round_ = msg.meta.get("round")
        if round_ != self.round or msg.src not in waiting:
            if isinstance(round_, int) and round_ < self.round and msg.src in self.clients:
                self.counters["late_updates"] += 1  # its round already closed
                log.info("%s: dropped %s's update for closed round %d", self.ep.address,
                         msg.src, round_)
            else:
                self._refuse(msg, f"update for round {round_!r} from a client not asked")
            return
        try:
            delta, samples = self._parse(msg)
        except (ValueError, KeyError, TypeError) as exc:
            self._refuse(msg, str(exc))
            return
        acc.add(delta, samples)
        waiting.discard(msg.src)

    def _parse(self, msg: Message) -> tuple[dict[str, tuple[np.ndarray | None, np.ndarray]],
                                            int]:
        samples = msg.meta["samples"]
        if type(samples) is not int or samples < 0:
            raise ValueError(f"samples must be a count, got {samples!r}")
        out: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
        for table, rows, values in unpack_deltas(msg):
            rows_n, cols = self.shapes[table]
            if rows is not None and (rows.ndim != 1 or rows.dtype.kind not in "iu" or (
                    len(rows) and (rows.min() < 0 or rows.max() >= rows_n))):
                raise ValueError(f"rows of {table} are not indices below {rows_n}")
            expected = (rows_n if rows is None else len(rows), cols)
            if values.shape != expected or not np.isfinite(values).all():
                raise ValueError(f"delta of {table} has shape {values.shape} (expected "
                                 f"{expected}) or is not finite")
            out[table] = (rows, values)
        return out, samples

    def _refuse(self, msg: Message, why: str) -> None:
        self.counters["refused"] += 1
        log.warning("%s refused %s from %s: %s", self.ep.address, msg.type, msg.src, why)


class ClientFailed(GeomlError):
    """A federated client cannot go on."""


def local_epochs(workload: Workload, part: Partition, model: Params, first_pass: int,
                 passes: int) -> tuple[Params, Params]:
    """A client's round: `passes` local passes from the model's rows it uses; returns the
    trained rows and the rows it started from."""
    old = take_rows(model, part.rows)
    params = old
    for k in range(passes):
        params = workload.local_pass(params, part, first_pass + k)
    return params, old


class FedClient:
    """Waits for the model, trains E local epochs on its own data, returns the delta."""

    def __init__(self, endpoint: Endpoint, workload: Workload, part: Partition,
                 aggregator: str, epochs: int, *, compute: Compute | None = None,
                 idle_timeout_s: float = 3600.0, resume: bool = False,
                 on_round: Callable[[int], None] | None = None) -> None:
        self.ep = endpoint
        self.resume = resume  # a new process after a crash: it says so first
        self.on_round = on_round  # called with round + 1 once its update is sent
        self.workload = workload
        self.part = part
        self.aggregator = aggregator
        self.epochs = epochs
        self.compute = compute or Compute()
        self.idle_timeout_s = idle_timeout_s
        self.counters: Counter[str] = Counter()
        self.times = {"compute_s": 0.0}
        schedule = getattr(workload, "schedule", None)
        share = schedule.clock_fraction if schedule is not None else 1.0
        #: local_pass calls per epoch (a pass may cover a fraction of the partition).
        self.passes_per_epoch = max(1, math.ceil(1 / share - 1e-9))
        self._next_pass = 0  # local_pass calls so far (the clock of the next one)

    async def run(self) -> int:
        """Serve rounds until fed.done; returns the rounds this client trained."""
        loop = asyncio.get_running_loop()
        if self.resume:
            await self.ep.send(self.aggregator, RESTARTED)
        while True:
            try:
                msg = await self.ep.recv(timeout=self.idle_timeout_s)
            except TimeoutError:
                raise ClientFailed(f"{self.ep.address}: no word from {self.aggregator} for "
                                   f"{self.idle_timeout_s:.0f}s") from None
            if msg.src != self.aggregator:
                self.counters["refused"] += 1
                log.warning("%s ignored %s from %s (not the aggregator)", self.ep.address,
                            msg.type, msg.src)
                continue
            if msg.type == DONE:
                return self.counters["rounds"]
            if msg.type != MODEL:
                self.counters["refused"] += 1
                log.warning("%s ignored an unexpected %s", self.ep.address, msg.type)
                continue
            model = dict(zip(msg.meta.get("tables", ()), msg.arrays, strict=False))
            if set(model) != set(self.part.rows) or not isinstance(msg.meta.get("round"), int):
                self.counters["refused"] += 1
                log.warning("%s ignored a fed.model without round or with tables %s",
                            self.ep.address, sorted(model))
                continue
            trained = msg.meta.get("trained")
            if isinstance(trained, int) and trained >= 0:  # where its passes are
                self._next_pass = trained * self.epochs * self.passes_per_epoch
            start = loop.time()
            new, old = await self._train(model)
            self.times["compute_s"] += loop.time() - start
            await self._reply(int(msg.meta["round"]), old, new)
            self.counters["rounds"] += 1
            if self.on_round is not None:
                self.on_round(int(msg.meta["round"]) + 1)

    async def _train(self, model: Params) -> tuple[Params, Params]:
        """This round's E local epochs: (trained rows, rows it started from)."""
        passes = self.epochs * self.passes_per_epoch
        new, old = await self.compute.run(local_epochs, self.workload, self.part, model,
                                          self._next_pass, passes,
                                          examples=self._round_examples())
        self._next_pass += passes
        return new, old

    def _weight(self) -> int:
        """What the aggregator weighs this client's delta by: its training examples."""
        return self.part.size

    def _round_examples(self) -> int:
        """Examples the next round's local passes visit."""
        first = self._next_pass
        return sum(self.workload.pass_examples(self.part, first + k)
                   for k in range(self.epochs * self.passes_per_epoch))

    async def _reply(self, round_: int, old: Params, new: Params) -> None:
        tables, sparse, arrays = [], [], []
        for table, rows in self.part.rows.items():
            tables.append(table)
            sparse.append(rows is not None)
            if rows is not None:
                arrays.append(rows)
            arrays.append(new[table] - old[table])
        await self.ep.send(self.aggregator, UPDATE, arrays=arrays,
                           meta={"round": round_, "samples": self._weight(), "tables": tables,
                                 "sparse": sparse})
