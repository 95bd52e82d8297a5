"""A role's state on disk: named arrays plus a JSON-able dict, replaced atomically.

A checkpoint is one .npz file. It is written to a temporary name and renamed over the old
one, so a process killed while writing leaves the previous checkpoint whole. It survives
the process, not the machine: there is no fsync (the page cache outlives a kill -9).
"""

from __future__ import annotations

import json
import os
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
