"""Streaming DiLoCo's sans-I/O core (Douillard et al., 2025): the model split into
fragments, the schedule on which they are synced, the merge of an overlapped result, and
the quantisation of what crosses the WAN.

- Fragments: the tables' elements, in table order and row-major, cut into F contiguous
  pieces of (nearly) equal size; a piece of a big table may end mid-row.
- Schedule: sync s sends fragment s mod F after (s + 1) * H / F inner clocks, so every
  fragment is synced once per H clocks and one fragment is on the WAN at a time. With
  overlap tau the region trains tau more clocks before the result is applied
  (0 <= tau < H / F: at most one sync in flight).
- Merge: a result applied without overlap replaces the fragment. With overlap the region's
  fragment becomes mix * local + (1 - mix) * global (the paper's alpha).
- Quantisation (`roles/quantise.py`): symmetric, uniform, one float32 scale per sync
  (max |x| / levels), codes of 8 bits (levels 127) or 4 bits (levels 7, two per byte). No
  error feedback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .quantise import check_bits, check_scale, dequantise, quantise


@dataclass(frozen=True)
class Fragment:
    """One fragment: (table, first flat index, end flat index) pieces, in order."""

    index: int
    pieces: tuple[tuple[str, int, int], ...]

    @property
    def size(self) -> int:
        """Elements in the fragment."""
        return sum(stop - start for _, start, stop in self.pieces)


def split_fragments(shapes: Mapping[str, tuple[int, int]], count: int) -> list[Fragment]:
    """The tables cut into `count` contiguous fragments of nearly equal element counts."""
    sizes = [(t, rows * cols) for t, (rows, cols) in shapes.items()]
    total = sum(n for _, n in sizes)
    if not 1 <= count <= total:
        raise ValueError(f"--diloco-fragments must be in [1, {total}] (the model's elements), "
                         f"got {count}")
    bounds = [total * i // count for i in range(count + 1)]
    fragments = []
    for i in range(count):
        lo, hi = bounds[i], bounds[i + 1]
        pieces, offset = [], 0
        for table, n in sizes:
            start, stop = max(lo, offset), min(hi, offset + n)
            if start < stop:
                pieces.append((table, start - offset, stop - offset))
            offset += n
        fragments.append(Fragment(i, tuple(pieces)))
    return fragments


def gather(params: Mapping[str, np.ndarray], fragment: Fragment) -> np.ndarray:
    """The fragment's values as one flat float32 vector (a copy)."""
    return np.concatenate([params[t].reshape(-1)[a:b] for t, a, b in fragment.pieces]
                          ).astype(np.float32, copy=False)


def scatter(params: Mapping[str, np.ndarray], fragment: Fragment, values: np.ndarray) -> None:
    """Write the flat `values` into the fragment's places, in place."""
    at = 0
    for table, a, b in fragment.pieces:
        params[table].reshape(-1)[a:b] = values[at:at + b - a]
        at += b - a


@dataclass(frozen=True)
class StreamSchedule:
    """When sync s happens and which fragment it carries."""

    h: int
    fragments: int = 1
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.h < 1:
            raise ValueError(f"--diloco-h must be >= 1, got {self.h}")
        if self.fragments < 1 or self.h % self.fragments:
            raise ValueError(f"--diloco-fragments must divide --diloco-h ({self.h}), "
                             f"got {self.fragments}")
        if not 0 <= self.overlap < self.step:
            raise ValueError(f"--diloco-overlap must be in [0, H/F = {self.step}), "
                             f"got {self.overlap}")

    @property
    def step(self) -> int:
        """Inner clocks between two syncs (H / F)."""
        return self.h // self.fragments

    def fragment(self, sync: int) -> int:
        """The fragment sync `sync` carries."""
        return sync % self.fragments

    def send_at(self, sync: int) -> int:
        """Inner clocks done when sync `sync` sends its fragment."""
        return (sync + 1) * self.step

    def apply_at(self, sync: int) -> int:
        """Inner clocks done when sync `sync`'s result is applied."""
        return self.send_at(sync) + self.overlap


def check_options(h: int, fragments: int, overlap: int, bits: int, mix: float
                  ) -> StreamSchedule:
    """The schedule of these options (ValueError, naming the option, if one cannot work)."""
    check_bits(bits)
    if not 0 <= mix < 1:
        raise ValueError(f"--diloco-mix must be in [0, 1), got {mix}")
    return StreamSchedule(h, fragments, overlap)


def merge(local: np.ndarray, global_: np.ndarray, mix: float, overlapped: bool) -> np.ndarray:
    """The fragment after a result arrives: the global values, or with overlap
    mix * local + (1 - mix) * global."""
    if not overlapped or mix == 0:
        return global_.copy()
    return (np.float32(mix) * local + np.float32(1 - mix) * global_).astype(np.float32)


def wire_values(values: np.ndarray, bits: int) -> tuple[np.ndarray, float | None]:
    """What goes on the wire for `values`: float32 as is (scale None), or codes and scale."""
    if bits == 0:
        return values.astype(np.float32, copy=False), None
    return quantise(values, bits)


def read_values(array: np.ndarray, scale: object, bits: int, size: int) -> np.ndarray:
    """The float32 values a wire array stands for (ValueError if malformed)."""
    if bits == 0:
        if array.dtype != np.float32 or array.shape != (size,):
            raise ValueError(f"expected {size} float32 values, got {array.dtype} "
                             f"{array.shape}")
        values = array
    else:
        values = dequantise(array, check_scale(scale), bits, size)
    if not np.isfinite(values).all():
        raise ValueError("values are not finite")
    return values
