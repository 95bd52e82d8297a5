"""Shipped PyTorch workloads (need the torch extra): a small CNN on the digits images, the
seed's image-classification case in miniature, and a character-level transformer language
model on six Shakespeare plays."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import numpy as np

from .datasets import load_digits, load_plays
from .torch_model import TorchTask, TorchWorkload, require_torch


def digits_cnn_task(channels: int = 16, hidden: int = 128, lr: float = 0.05,
                    momentum: float = 0.9, batch: int = 32, test_fraction: float = 0.2,
                    seed: int = 0) -> TorchTask:
    """Two 3x3 convolutions (channels, 2 x channels), 2x2 max-pool, a hidden layer and
    ten outputs, trained by SGD with momentum on the 8x8 digits. Parameters:
    ~(2 x channels x 16) x hidden x 4 bytes, so channels=64 hidden=1024 is ~8.5 MB."""
    torch = require_torch()
    from torch import nn

    if channels < 1 or hidden < 1 or lr <= 0 or not 0 <= momentum < 1 or batch < 1 \
            or not 0 < test_fraction < 1:
        raise ValueError("cnn-digits: need channels, hidden, batch >= 1, lr > 0, "
                         "0 <= momentum < 1, 0 < test_fraction < 1")
    data = load_digits()
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32).reshape(-1, 1, 8, 8))
    y = torch.from_numpy(data.y.astype(np.int64))
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, round(len(y) * test_fraction))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, channels, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(channels, 2 * channels, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(2 * channels * 16, hidden)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(hidden, data.n_classes))]))
    return TorchTask(model, nn.functional.cross_entropy,
                     functools.partial(torch.optim.SGD, lr=lr, momentum=momentum),
                     (x[train], y[train]), (x[test], y[test]), batch_size=batch)


def digits_cnn(clock_fraction: float = 1.0, torch_threads: int = 1,
               **options: Any) -> TorchWorkload:
    """The `cnn-digits` workload."""
    return TorchWorkload(digits_cnn_task(**options), name="cnn-digits",
                         seed=options.get("seed", 0), clock_fraction=clock_fraction,
                         threads=torch_threads)


def _windows(tokens: np.ndarray, context: int) -> np.ndarray:
    """Non-overlapping (context + 1)-character windows, one row each."""
    n = (len(tokens) - 1) // context
    starts = np.arange(n) * context
    return tokens[starts[:, None] + np.arange(context + 1)]


def _spread(windows: np.ndarray, n: int) -> np.ndarray:
    """At most n of the windows, evenly spaced."""
    if len(windows) <= n:
        return windows
    return windows[np.linspace(0, len(windows) - 1, n).round().astype(int)]


def shakespeare_lm_task(d_model: int = 64, layers: int = 2, heads: int = 4,
                        context: int = 64, lr: float = 1e-3, batch: int = 16,
                        test_fraction: float = 0.1, test_windows: int = 256,
                        train_windows: int = 0, seed: int = 0) -> TorchTask:
    """A character-level transformer (torch_lm.CharTransformer) trained by Adam on the
    first 1 - test_fraction of each shipped play (all of it, or `train_windows` windows
    spread over it), validated on up to `test_windows` windows of the rest. An example is
    `context` characters and the `context` that follow each. Parameters: ~12 x layers x
    d_model^2 x 4 bytes, so d_model=192 layers=4 is ~7 MB."""
    torch = require_torch()
    from . import torch_lm

    if min(d_model, layers, heads, context, batch, test_windows) < 1 or lr <= 0 \
            or not 0 < test_fraction < 1 or train_windows < 0:
        raise ValueError("lm-shakespeare: need d_model, layers, heads, context, batch, "
                         "test_windows >= 1, train_windows >= 0 (0: all), lr > 0, "
                         "0 < test_fraction < 1")
    plays = load_plays()
    vocab = sorted(set("".join(plays.values())))
    lookup = np.zeros(128, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    train, test = [], []
    for text in plays.values():
        tokens = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        cut = round(len(tokens) * (1 - test_fraction))
        train.append(_windows(tokens[:cut], context))
        test.append(_windows(tokens[cut:], context))
    train_w, test_w = np.concatenate(train), np.concatenate(test)
    test_w = _spread(test_w, test_windows)
    train_w = _spread(train_w, train_windows or len(train_w))
    torch.manual_seed(seed)
    model = torch_lm.CharTransformer(len(vocab), context, d_model, layers, heads)
    return TorchTask(model, torch_lm.sequence_cross_entropy,
                     functools.partial(torch.optim.Adam, lr=lr),
                     (torch.from_numpy(np.ascontiguousarray(train_w[:, :-1])),
                      torch.from_numpy(np.ascontiguousarray(train_w[:, 1:]))),
                     (torch.from_numpy(np.ascontiguousarray(test_w[:, :-1])),
                      torch.from_numpy(np.ascontiguousarray(test_w[:, 1:]))),
                     batch_size=batch, eval_batch_size=64)


def shakespeare_lm(clock_fraction: float = 1.0, torch_threads: int = 1,
                   **options: Any) -> TorchWorkload:
    """The `lm-shakespeare` workload (its accuracy is next-character accuracy)."""
    return TorchWorkload(shakespeare_lm_task(**options), name="lm-shakespeare",
                         seed=options.get("seed", 0), clock_fraction=clock_fraction,
                         threads=torch_threads)
