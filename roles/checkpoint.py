"""A role's state on disk: named arrays plus a JSON-able dict, replaced atomically.

A checkpoint is one .npz file. It is written to a temporary name and renamed over the old
one, so a process killed while writing leaves the previous checkpoint whole. It survives
the process, not the machine: there is no fsync (the page cache outlives a kill -9).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from geoml.bus import GeomlError

_META = "__meta__"


class CheckpointError(GeomlError):
    """A checkpoint could not be read (damaged, or not a geoml checkpoint)."""


def save_checkpoint(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
    """Write `meta` and `arrays` to `path` atomically; returns the bytes written."""
    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(tmp, "wb") as f:
        np.savez(f, **{_META: blob}, **arrays)
        size = f.tell()
    os.replace(tmp, path)
    return size


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The (meta, arrays) saved at `path`; CheckpointError when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    blob = arrays.pop(_META, None)
    if blob is None:
        raise CheckpointError(f"{path} is not a geoml checkpoint (no {_META})")
    try:
        meta = json.loads(blob.tobytes())
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: damaged meta: {exc}") from None
    return meta, arrays


class Checkpointed:
    """A role whose state (`_state`/`_load_state`) a checkpoint file holds: `restore()` it
    after a crash, `_write_checkpoint()` it, counting writes, their time and size."""

    checkpoint: Path | None
    counters: Counter[str]
    resumed: bool
    #: What the role is, for errors ("this shard").
    _what = "role"

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def restore(self) -> bool:
        """Load the checkpoint if there is one (a process restarted after a crash); False
        when there is none yet (the crash came before the first one: start afresh)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        meta, arrays = load_checkpoint(self.checkpoint)
        try:
            self._load_state(meta, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise GeomlError(f"checkpoint {self.checkpoint} does not fit this {self._what}: "
                             f"{exc}") from None
        self.resumed = True
        self.counters["restored"] += 1
        return True

    def restart(self) -> bool:
        """In a process started after a crash: `restore()`, and in any case have the roles
        this one talks to resend what they sent (frames that reached the dead process died
        with it, even before its first checkpoint). True if there was a checkpoint."""
        found = self.restore()
        self.resumed = True
        return found

    def _write_checkpoint(self) -> None:
        assert self.checkpoint is not None
        t0 = time.perf_counter()
        meta, arrays = self._state()
        self.counters["checkpoint_bytes"] = save_checkpoint(self.checkpoint, meta, arrays)
        self.counters["checkpoints"] += 1
        self.counters["checkpoint_ms"] += round((time.perf_counter() - t0) * 1000)
