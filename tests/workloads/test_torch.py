"""The PyTorch adapter: a model's named parameters as tables, a replica and optimizer per
worker, evaluation, what it refuses, and a user's own file."""

from __future__ import annotations

import functools
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoml.workloads import make_workload
from geoml.workloads.torch_model import TorchTask, TorchWorkload, require_torch


def _task(model: nn.Module | None = None, n: int = 64) -> TorchTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    return TorchTask(model, nn.functional.cross_entropy,
                     functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                     (x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:]), batch_size=8)


def test_tables_are_the_named_parameters_as_two_dimensional_float32() -> None:
    w = make_workload("cnn-digits", {"channels": 4, "hidden": 8})
    shapes = w.table_shapes()
    assert list(shapes) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                            "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert shapes["conv1.weight"] == (4, 9) and shapes["conv2.weight"] == (8, 36)
    assert shapes["conv1.bias"] == (1, 4) and shapes["fc1.weight"] == (8, 8 * 16)
    init = w.init_params()
    assert all(v.dtype == np.float32 and v.shape == shapes[k] for k, v in init.items())
    n_params = sum(p.numel() for p in w.task.model.parameters())
    assert w.model_bytes() == 4 * n_params
    # seeded: a second build (another process) starts from the same model
    again = make_workload("cnn-digits", {"channels": 4, "hidden": 8}).init_params()
    assert all(np.array_equal(init[k], again[k]) for k in init)


def test_a_pass_trains_a_replica_whose_optimizer_state_stays_with_its_worker() -> None:
    w = TorchWorkload(_task())
    parts = w.partition({"a": 2})
    start = w.init_params()
    kept = {k: v.copy() for k, v in start.items()}
    new = w.local_pass(start, parts[("a", 0)], 0)
    assert all(np.array_equal(start[k], kept[k]) for k in start)  # params untouched
    assert any(not np.array_equal(new[k], start[k]) for k in start)
    _, opt0, _ = w.replica(parts[("a", 0)])
    _, opt1, _ = w.replica(parts[("a", 1)])
    assert opt0 is not opt1 and len(opt1.state) == 0  # worker 1 has not trained yet
    momentum = {id(p): s["momentum_buffer"].clone() for p, s in opt0.state.items()}
    assert len(momentum) == len(start)
    # the second clock starts from the momentum the first left (not from zero)
    fresh = TorchWorkload(_task())
    fresh_part = fresh.partition({"a": 2})[("a", 0)]
    one = w.local_pass(new, parts[("a", 0)], 1)
    restarted = fresh.local_pass(new, fresh_part, 1)
    assert any(not np.allclose(one[k], restarted[k]) for k in one)


def test_evaluation_reports_held_out_loss_and_accuracy() -> None:
    w = TorchWorkload(_task())
    params = w.init_params()
    metrics = w.evaluate(params)
    model = w.task.model
    x, y = (torch.from_numpy(a) for a in (w.test_x, w.test_y))
    with torch.no_grad():
        out = model(x)
    assert metrics["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, y)),
                                            rel=1e-6)
    assert metrics["objective"] == metrics["loss"]
    assert metrics["accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    subset = w.evaluate(params, np.arange(4))
    with torch.no_grad():
        four = nn.functional.cross_entropy(model(x[:4]), y[:4])
    assert subset["loss"] == pytest.approx(float(four), rel=1e-6)


def test_batch_norm_and_float64_are_refused_in_one_line() -> None:
    bn = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"has buffers \(1\.running_mean, 1\.running_var, "
                                         r"1\.num_batches_tracked\).*GroupNorm"):
        TorchWorkload(_task(bn))
    with pytest.raises(ValueError, match=r"0\.weight, 0\.bias are not float32"):
        TorchWorkload(_task(nn.Sequential(nn.Linear(5, 2).double())))
    with pytest.raises(ValueError, match=r"must be a torch\.nn\.Module"):
        TorchWorkload(TorchTask("model", nn.functional.mse_loss, torch.optim.SGD,
                                (torch.zeros(2, 1), torch.zeros(2)),
                                (torch.zeros(2, 1), torch.zeros(2))))


def test_a_dataset_is_taken_as_well_as_tensors() -> None:
    task = _task()
    x, y = task.train
    task.train = torch.utils.data.TensorDataset(x, y)
    w = TorchWorkload(task)
    assert np.array_equal(w.train_x, x.numpy()) and np.array_equal(w.train_y, y.numpy())


def test_a_copy_for_a_compute_process_starts_without_replicas() -> None:
    w = TorchWorkload(_task())
    part = w.partition({"a": 1})[("a", 0)]
    w.local_pass(w.init_params(), part, 0)
    copy = pickle.loads(pickle.dumps(w))
    assert copy._replicas == {} and len(w._replicas) == 1
    assert all(np.array_equal(a, b) for a, b in zip(
        w.init_params().values(), copy.init_params().values(), strict=True))


USER_FILE = '''
import torch
from torch import nn
from geoml.workloads.torch_model import TorchTask


def make(options):
    width = int(options.get("width", "4"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g)
    y = (x.sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    return TorchTask(model, nn.functional.cross_entropy,
                     lambda ps: torch.optim.Adam(ps, lr=0.01), (x[:30], y[:30]),
                     (x[30:], y[30:]), batch_size=10)


def not_a_task(options):
    return 42


def needs_width(options):
    return int(options["width"])
'''


def test_a_users_file_becomes_a_workload_and_its_mistakes_get_one_line(tmp_path: Path
                                                                          ) -> None:
    f = tmp_path / "mine.py"
    f.write_text(USER_FILE)
    w = make_workload(f"torch:{f}:make", {"width": "6", "seed": "3"})
    assert w.table_shapes() == {"0.weight": (6, 3), "0.bias": (1, 6), "2.weight": (2, 6),
                                "2.bias": (1, 2)}
    assert make_workload(f"torch:{f}").table_shapes()["0.weight"] == (4, 3)  # make, default
    # the seed option seeds the model: same seed, same start; another, another
    same = make_workload(f"torch:{f}:make", {"width": "6", "seed": "3"}).init_params()
    other = make_workload(f"torch:{f}:make", {"width": "6", "seed": "4"}).init_params()
    assert np.array_equal(w.init_params()["0.weight"], same["0.weight"])
    assert not np.array_equal(same["0.weight"], other["0.weight"])
    # a compute process rebuilds it from the file
    assert pickle.loads(pickle.dumps(w)).table_shapes() == w.table_shapes()
    with pytest.raises(ValueError, match=r"no file '.*nope\.py'"):
        make_workload(f"torch:{tmp_path / 'nope.py'}")
    with pytest.raises(ValueError, match=r"has no function 'build' \(it defines: make, "
                                         r"needs_width, not_a_task\)"):
        make_workload(f"torch:{f}:build")
    with pytest.raises(ValueError, match=r"must return a geoml.workloads.torch_model."
                                         r"TorchTask .* got int"):
        make_workload(f"torch:{f}:not_a_task")
    with pytest.raises(ValueError, match=r"needs_width\(options\) in .*mine.py raised "
                                         r"KeyError: 'width'"):
        make_workload(f"torch:{f}:needs_width")
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ValueError, match=r"broken.py failed to load: RuntimeError: no GPU"):
        make_workload(f"torch:{bad}")


def test_without_torch_the_workload_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ValueError, match=r"needs PyTorch.*pip install 'geoml\[torch\]'"):
        require_torch()
    with pytest.raises(ValueError, match=r"needs PyTorch"):
        make_workload("cnn-digits")


def test_a_torch_workload_sets_its_process_to_the_threads_it_is_given() -> None:
    before = torch.get_num_threads()
    try:
        w = make_workload("cnn-digits", {"channels": 2, "hidden": 4, "torch_threads": 2})
        assert torch.get_num_threads() == 2 and w.describe()["torch_threads"] == 2
        make_workload("cnn-digits", {"channels": 2, "hidden": 4})
        assert torch.get_num_threads() == 1  # the default: a worker is one core
        with pytest.raises(ValueError, match="torch_threads must be >= 1"):
            make_workload("cnn-digits", {"torch_threads": 0})
    finally:
        torch.set_num_threads(before)


TINY_LM = {"d_model": 16, "layers": 1, "heads": 2, "context": 16, "test_windows": 32}


def test_the_language_model_learns_next_characters_of_the_shipped_plays() -> None:
    w = make_workload("lm-shakespeare", {**TINY_LM, "clock_fraction": 0.02})
    names = list(w.table_shapes())
    assert names[:2] == ["tok.weight", "pos.weight"] and "blocks.0.qkv.weight" in names
    assert w.table_shapes()["tok.weight"] == (76, 16)  # 76 distinct characters
    x, y = w.train_x, w.train_y
    assert x.shape[1] == y.shape[1] == 16 and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])  # the target is the next character
    assert np.array_equal(y[:99, -1], x[1:100, 0])  # windows of one play follow on
    assert len(w.test_y) == 32
    # held out: no validation window is also a training window
    train = {row.tobytes() for row in x}
    assert not any(row.tobytes() in train for row in w.test_x)
    part = w.partition({"a": 1})[("a", 0)]
    params = w.init_params()
    before = w.evaluate(params)
    assert before["loss"] > 4.0  # about ln(76) = 4.33 untrained
    for clock in range(4):
        params = w.local_pass(params, part, clock)
    after = w.evaluate(params)
    assert after["loss"] < before["loss"] - 0.5
    assert after["accuracy"] > before["accuracy"]


def test_the_language_model_is_causal() -> None:
    """A character's logits do not depend on the characters after it."""
    w = make_workload("lm-shakespeare", TINY_LM)
    model = w.task.model.eval()
    x = torch.from_numpy(w.test_x[:2].copy())
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 76
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.equal(a[:, 10:], b[:, 10:])
