"""A PyTorch model as a geoml workload (the optional extra: `pip install geoml[torch]`).

A `TorchTask` is what a user brings: an `nn.Module`, a loss, an optimizer factory and the
training and held-out data. `TorchWorkload` makes it a workload every system runs:

- its tables are the model's trainable parameters, by name (`conv1.weight`), each viewed
  as a 2-D float32 table (first dimension = rows, the rest flattened; a 1-D parameter is
  one row), so they cross the bus as raw little-endian buffers like every other array;
- each worker trains its own replica with its own optimizer, whose state (momentum, Adam
  moments) stays with the worker from clock to clock; its update is what its local steps
  changed;
- evaluation runs on the held-out split: the loss, and for classifiers the accuracy
  (argmax over the last dimension, so a language model's is its next-token accuracy).

Buffers (BatchNorm's running statistics) are refused: geoml synchronises parameters, so
buffers would differ silently between replicas. Parameters that do not train
(`requires_grad=False`) stay as built, in every process (the model is built seeded).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DTYPE,
    Params,
    Partition,
    Schedule,
    Workload,
    labelled_partitions,
    split_region_first,
)

INSTALL_HINT = ("PyTorch is an optional extra of geoml: pip install 'geoml[torch]' "
                "(CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def require_torch() -> Any:
    """The torch module, or ValueError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"this workload needs PyTorch, which is not installed. {INSTALL_HINT}"
                         ) from None
    return torch


@dataclass
class TorchTask:
    """What a user's `make(options)` returns.

    `train` and `test` are (inputs, targets) tensors or a torch Dataset of such pairs.
    `optimizer` makes a worker's optimizer from its replica's parameters, e.g.
    ``lambda params: torch.optim.SGD(params, lr=0.05)``.
    """

    model: Any  # torch.nn.Module
    loss: Callable[[Any, Any], Any]  # (model output, targets) -> scalar tensor
    optimizer: Callable[[Any], Any]  # iterable of parameters -> torch.optim.Optimizer
    train: Any
    test: Any
    batch_size: int = 32
    classify: bool = True  # also report accuracy
    eval_batch_size: int = 1024


def _tensors(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) as numpy arrays (shared memory with the tensors given)."""
    torch = require_torch()
    if isinstance(data, tuple | list) and len(data) == 2 \
            and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if not pairs:
            raise ValueError(f"torch workload: the {what} set is empty")
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
    else:
        raise ValueError(f"torch workload: {what} must be (inputs, targets) tensors or a "
                         f"torch Dataset, got {type(data).__name__}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"torch workload: the {what} set has {len(x)} inputs and {len(y)} "
                         f"targets (need the same number, at least one)")
    return x.detach().cpu().contiguous().numpy(), y.detach().cpu().contiguous().numpy()


def _table_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) <= 1:
        return 1, int(math.prod(shape))
    return int(shape[0]), int(math.prod(shape[1:]))


class TorchWorkload(Workload):
    """A `TorchTask` as a workload; see the module docstring."""

    objective_name = "loss"

    def __init__(self, task: TorchTask, *, name: str = "torch", seed: int = 0,
                 clock_fraction: float = 1.0, spec: tuple[str, dict[str, Any]] | None = None,
                 threads: int | None = 1) -> None:
        torch = require_torch()
        if threads is not None:
            if threads < 1:
                raise ValueError("torch workload: torch_threads must be >= 1")
            # A worker computes in a thread of its own; there torch's two-thread pool ran
            # at less than half the speed of one thread (benchmarks/bench_torch.py).
            torch.set_num_threads(threads)
        if not isinstance(task, TorchTask):
            raise ValueError(f"torch workload: expected a TorchTask, got {type(task).__name__}")
        if not isinstance(task.model, torch.nn.Module):
            raise ValueError(f"torch workload: model must be a torch.nn.Module, got "
                             f"{type(task.model).__name__}")
        if not callable(task.loss) or not callable(task.optimizer):
            raise ValueError("torch workload: loss and optimizer must be callables")
        if task.batch_size < 1 or task.eval_batch_size < 1:
            raise ValueError("torch workload: batch sizes must be >= 1")
        buffers = [n for n, _ in task.model.named_buffers()]
        if buffers:
            raise ValueError(
                f"torch workload: the model has buffers ({', '.join(buffers[:4])}"
                f"{', ...' if len(buffers) > 4 else ''}); geoml synchronises parameters "
                f"only, so they would differ silently between replicas: use a norm without "
                f"running statistics (GroupNorm, LayerNorm) or none")
        self.params = {n: p for n, p in task.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("torch workload: the model has no trainable parameters")
        wrong = [n for n, p in self.params.items() if p.dtype != torch.float32]
        if wrong:
            raise ValueError(f"torch workload: parameters {', '.join(wrong)} are not float32 "
                             f"(geoml's tables are float32; call model.float())")
        self.task, self.name, self.seed = task, name, seed
        self._spec = spec
        self.schedule = Schedule(clock_fraction, 0.0)
        self.train_x, self.train_y = _tensors(task.train, "training")
        self.test_x, self.test_y = _tensors(task.test, "held-out")
        self._shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        self._init = {n: p.detach().numpy().reshape(_table_shape(p.shape)).astype(DTYPE)
                      for n, p in self.params.items()}
        self._replicas: dict[tuple[str, int], tuple[Any, Any, dict[str, Any]]] = {}
        self._replicas_lock = threading.Lock()
        self._eval_lock = threading.Lock()
        self._eval_model = copy.deepcopy(task.model)
        self._eval_params = dict(self._eval_model.named_parameters())

    def __reduce__(self) -> Any:
        # A model defined in a user's file cannot be unpickled by reference in another
        # process: a compute process rebuilds the workload from its name instead.
        if self._spec is None:
            return super().__reduce__()
        from . import make_workload

        return make_workload, self._spec

    def __getstate__(self) -> dict[str, Any]:
        # Replicas (and their optimizers) belong to the process that trains them; a copy
        # sent to a compute process starts without any.
        state = dict(self.__dict__)
        for key in ("_replicas", "_replicas_lock", "_eval_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._replicas = {}
        self._replicas_lock = threading.Lock()
        self._eval_lock = threading.Lock()

    # -- the model's tables ---------------------------------------------------------------

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return {n: _table_shape(s) for n, s in self._shapes.items()}

    def init_params(self) -> Params:
        return {n: v.copy() for n, v in self._init.items()}

    def _load(self, params: Mapping[str, Any], into: Mapping[str, Any]) -> None:
        torch = require_torch()
        with torch.no_grad():
            for n, p in into.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(params[n])).view(p.shape))

    def _read(self, params: Mapping[str, Any]) -> Params:
        return {n: p.detach().numpy().reshape(_table_shape(p.shape)).copy()
                for n, p in params.items()}

    # -- data -----------------------------------------------------------------------------

    def _regions_of(self, n: int, n_regions: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, n_regions, n)

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        regions = list(workers)
        rng = np.random.default_rng(self.seed + 2)
        split = split_region_first(self._regions_of(len(self.train_y), len(regions), rng),
                                   regions, workers, rng)
        rows = dict.fromkeys(self._shapes)
        return {key: Partition(key[0], key[1], dict(rows),
                               {"x": self.train_x[idx], "y": self.train_y[idx]})
                for key, idx in split.items()}

    def test_regions(self, regions: Sequence[str]) -> dict[str, np.ndarray]:
        region = self._regions_of(len(self.test_y), len(regions),
                                  np.random.default_rng(self.seed + 3))
        return {r: np.flatnonzero(region == k) for k, r in enumerate(regions)}

    def raw_records(self, part: Partition) -> dict[str, np.ndarray]:
        return {"x": part.data["x"], "y": part.data["y"]}

    def partition_records(self, records: Sequence[Mapping[str, np.ndarray]], region: str,
                          workers: int) -> dict[tuple[str, int], Partition]:
        return labelled_partitions(records, region, workers, self.seed + 4,
                                   list(self._shapes))

    # -- training and evaluation ----------------------------------------------------------

    def replica(self, part: Partition) -> tuple[Any, Any, dict[str, Any]]:
        """This worker's model, optimizer and trainable parameters (made on first use)."""
        key = (part.region, part.worker)
        with self._replicas_lock:
            if key not in self._replicas:
                model = copy.deepcopy(self.task.model)
                params = {n: p for n, p in model.named_parameters() if n in self.params}
                self._replicas[key] = (model, self.task.optimizer(list(params.values())),
                                       params)
            return self._replicas[key]

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        torch = require_torch()
        model, optimizer, trainable = self.replica(part)
        self._load(params, trainable)
        model.train()
        x, y = part.data["x"], part.data["y"]
        order = self.schedule.examples(len(y), clock, part, self.seed)
        b = self.task.batch_size
        for start in range(0, len(order), b):
            idx = np.sort(order[start:start + b])
            optimizer.zero_grad(set_to_none=True)
            loss = self.task.loss(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            optimizer.step()
        return self._read(trainable)

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        torch = require_torch()
        x, y = self.test_x, self.test_y
        if subset is not None:
            x, y = x[subset], y[subset]
        total, correct, count = 0.0, 0, 0
        with self._eval_lock, torch.no_grad():
            self._load(params, self._eval_params)
            self._eval_model.eval()
            for start in range(0, len(y), self.task.eval_batch_size):
                xb = torch.from_numpy(x[start:start + self.task.eval_batch_size])
                yb = torch.from_numpy(y[start:start + self.task.eval_batch_size])
                out = self._eval_model(xb)
                total += float(self.task.loss(out, yb)) * len(yb)
                count += len(yb)
                if self.task.classify:
                    correct += int((out.argmax(dim=-1) == yb).sum())
        loss = total / max(count, 1)
        metrics = {"objective": loss, "loss": loss}
        if self.task.classify:
            metrics["accuracy"] = correct / max(1, int(np.prod(y.shape)))
        return metrics

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["framework"] = "torch"
        out["torch_threads"] = require_torch().get_num_threads()
        out["parameters"] = {n: list(s) for n, s in self._shapes.items()}
        return out


def load_user_task(path: str, function: str, options: Mapping[str, str]) -> TorchTask:
    """`function(options)` of the Python file at `path`; ValueError saying what is wrong."""
    torch = require_torch()
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"torch workload: no file {path!r} (give torch:PATH.py[:FUNCTION])")
    spec = importlib.util.spec_from_file_location(f"geoml_user_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ValueError(f"torch workload: cannot load {path!r} as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report any failure in one line
        raise ValueError(f"torch workload: {path} failed to load: "
                         f"{type(exc).__name__}: {exc}") from None
    make = getattr(module, function, None)
    if not callable(make):
        defined = sorted(n for n, v in vars(module).items()
                         if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise ValueError(f"torch workload: {path} has no function {function!r} "
                         f"(it defines: {', '.join(defined) or 'none'})")
    torch.manual_seed(int(options.get("seed", 0)))  # every process builds the same model
    try:
        task = make(dict(options))
    except Exception as exc:  # the user's code: one line, with where to look
        raise ValueError(f"torch workload: {function}(options) in {path} raised "
                         f"{type(exc).__name__}: {exc}") from None
    if isinstance(task, Mapping):
        try:
            task = TorchTask(**task)
        except TypeError as exc:
            raise ValueError(f"torch workload: {function}() returned a dict that is not a "
                             f"TorchTask: {exc}") from None
    if not isinstance(task, TorchTask):
        raise ValueError(f"torch workload: {function}(options) must return a "
                         f"geoml.workloads.torch_model.TorchTask (or a dict of its fields), "
                         f"got {type(task).__name__}")
    return task


def parse_torch_spec(spec: str) -> tuple[str, str]:
    """`torch:PATH.py[:FUNCTION]` -> (PATH.py, FUNCTION, by default make)."""
    rest = spec.partition(":")[2]
    path, _, function = rest.rpartition(":") if ":" in rest else (rest, "", "make")
    if not path or not function:
        raise ValueError(f"torch workload {spec!r}: give torch:PATH.py[:FUNCTION]")
    return path, function


def user_workload(spec: str, options: Mapping[str, Any]) -> TorchWorkload:
    """`torch:PATH.py[:FUNCTION]` with `--opt` options (FUNCTION defaults to make). The
    options seed, clock_fraction and torch_threads (per process, default 1) are geoml's;
    every option reaches FUNCTION as text."""
    path, function = parse_torch_spec(spec)
    opts = {k: str(v) for k, v in options.items()}
    try:
        seed = int(opts.get("seed", "0"))
        clock_fraction = float(opts.get("clock_fraction", "1.0"))
        threads = int(opts.get("torch_threads", "1"))
    except ValueError:
        raise ValueError("torch workload: seed and torch_threads must be integers and "
                         "clock_fraction a number") from None
    task = load_user_task(path, function, opts)
    return TorchWorkload(task, name=f"torch:{Path(path).name}", seed=seed,
                         clock_fraction=clock_fraction, spec=(spec, dict(options)),
                         threads=threads)
