"""Shipped PyTorch workloads (need the torch extra): a small CNN on the digits images, the
seed's image-classification case in miniature."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import numpy as np

from .datasets import load_digits
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
