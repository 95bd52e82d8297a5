"""Compact wire form of sparse updates: per table, element indices + float32 values.

Indices are sent relative to the smallest one (`base`), either as a bitmap over the span
[base, base + span) when that is smaller (dense updates: 1 bit per element of the span), or
as `<u4` offsets (4 bytes per element). Values follow in index order. Duplicate indices are
summed first, so decoding always yields sorted, unique indices.

An update is encoded as meta {"tables": [...], "enc": [[kind, base, span], ...]} plus two
arrays per table (index part, values); `decode` validates everything it reads. Index sets
alone (`encode_indices`) use the same meta with one array per table.

With `bits` 8 or 4 the values are codes (`roles/quantise.py`, power-of-two scales) and meta
also has "bits" and "scales" (one float per table); decoding gives code * scale in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .quantise import check_bits, check_scale, dequantise, quantise

#: Per table: flat element indices (int64) and values.
Update = dict[str, tuple[np.ndarray, np.ndarray]]

BITMAP, OFFSETS = "bitmap", "u4"


def canonical(idx: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique indices, duplicates' values summed."""
    idx = np.asarray(idx, np.int64)
    if len(idx) < 2 or (np.all(idx[1:] > idx[:-1])):
        return idx, np.asarray(vals)
    uniq, inverse = np.unique(idx, return_inverse=True)
    summed = np.zeros(len(uniq), np.float64)
    np.add.at(summed, inverse, vals)
    return uniq, summed.astype(vals.dtype)


def encode_index(idx: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """([kind, base, span], index part) for sorted, unique, non-empty `idx`."""
    base = int(idx[0])
    span = int(idx[-1]) - base + 1
    if span > 0xFFFF_FFFF:
        raise ValueError(f"indices span {span} elements (at most 2**32 - 1)")
    rel = idx - base
    if (span + 7) // 8 < 4 * len(idx):
        mask = np.zeros(span, bool)
        mask[rel] = True
        return [BITMAP, base, span], np.packbits(mask)
    return [OFFSETS, base, span], rel.astype("<u4")


def decode_index(spec: Any, part: np.ndarray, table: str) -> np.ndarray:
    """The sorted int64 indices `encode_index` described; ValueError if inconsistent."""
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[1], int)
            and isinstance(spec[2], int) and spec[1] >= 0 and spec[2] >= 1):
        raise ValueError(f"update: bad encoding {spec!r} for table {table!r}")
    kind, base, span = spec
    if kind == BITMAP:
        if part.dtype != np.uint8 or part.shape != ((span + 7) // 8,):
            raise ValueError(f"update: bitmap of {table!r} does not cover {span} elements")
        rel = np.flatnonzero(np.unpackbits(part, count=span))
    elif kind == OFFSETS:
        if part.ndim != 1 or part.dtype.kind != "u":
            raise ValueError(f"update: offsets of {table!r} are not unsigned integers")
        rel = part.astype(np.int64)
        if len(rel) and (rel.max() >= span or np.any(rel[1:] <= rel[:-1])):
            raise ValueError(f"update: offsets of {table!r} unsorted or beyond the span")
    else:
        raise ValueError(f"update: unknown index encoding {kind!r} for {table!r}")
    return rel + base


def _check_meta(meta: dict[str, Any], arrays: list[np.ndarray], per_table: int
                ) -> tuple[list[str], list[Any]]:
    tables, enc = meta.get("tables"), meta.get("enc")
    if not isinstance(tables, list) or not isinstance(enc, list) or len(tables) != len(enc):
        raise ValueError("update: meta needs equal-length 'tables' and 'enc' lists")
    if len(arrays) != per_table * len(tables):
        raise ValueError(f"update: {len(tables)} tables need {per_table * len(tables)} "
                         f"arrays, got {len(arrays)}")
    return tables, enc


def encode(update: Update, bits: int = 0) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(meta, arrays) for the non-empty tables of `update` (values as `bits`-bit codes
    unless `bits` is 0)."""
    check_bits(bits, "--topk-bits")
    tables: list[str] = []
    enc: list[list[Any]] = []
    arrays: list[np.ndarray] = []
    scales: list[float] = []
    for table in sorted(update):
        idx, vals = canonical(*update[table])
        if not len(idx):
            continue
        spec, part = encode_index(idx)
        enc.append(spec)
        if bits:
            codes, scale = quantise(np.asarray(vals, np.float64), bits, pow2=True)
            arrays += [part, codes]
            scales.append(scale)
        else:
            arrays += [part, np.asarray(vals, "<f4")]
        tables.append(table)
    meta: dict[str, Any] = {"tables": tables, "enc": enc}
    if bits:
        meta.update(bits=bits, scales=scales)
    return meta, arrays


def decode(meta: dict[str, Any], arrays: list[np.ndarray]) -> Update:
    """The update `encode` made; ValueError for anything inconsistent."""
    tables, enc = _check_meta(meta, arrays, 2)
    bits, scales = _codes_of(meta, len(tables))
    out: Update = {}
    for i, (table, spec) in enumerate(zip(tables, enc, strict=True)):
        vals = arrays[2 * i + 1]
        if vals.ndim != 1:
            raise ValueError(f"update: values of {table!r} are not one-dimensional")
        idx = decode_index(spec, arrays[2 * i], table)
        if bits:
            try:
                vals = dequantise(vals, scales[i], bits, len(idx))
            except ValueError as e:
                raise ValueError(f"update: values of {table!r}: {e}") from None
        if len(idx) != len(vals):
            raise ValueError(f"update: {len(idx)} indices but {len(vals)} values for "
                             f"{table!r}")
        out[table] = (idx, vals)
    return out


#: The meta fields an encoded update is made of (a relay passes exactly these on).
ENCODING_FIELDS = ("tables", "enc", "bits", "scales")


def encoding_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields of `meta` that describe an encoded update (what a relay passes on)."""
    return {k: meta[k] for k in ENCODING_FIELDS if k in meta}


def _codes_of(meta: dict[str, Any], n_tables: int) -> tuple[int, list[float]]:
    """The code width and per-table scales of an update's values (0, [] for float32)."""
    bits = meta.get("bits", 0)
    if bits == 0 and "scales" not in meta:
        return 0, []
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ValueError(f"update: bits must be 4 or 8 with scales, got {bits!r}")
    scales = meta.get("scales")
    if not isinstance(scales, list) or len(scales) != n_tables:
        raise ValueError(f"update: {n_tables} tables need {n_tables} scales, got {scales!r}")
    try:
        return bits, [check_scale(s) for s in scales]
    except ValueError as e:
        raise ValueError(f"update: {e}") from None


def encode_indices(indices: dict[str, np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(meta, arrays) for index sets only (e.g. the rows a selective barrier blocks)."""
    tables, enc, arrays = [], [], []
    for table in sorted(indices):
        idx = np.unique(np.asarray(indices[table], np.int64))
        if len(idx):
            spec, part = encode_index(idx)
            tables.append(table)
            enc.append(spec)
            arrays.append(part)
    return {"tables": tables, "enc": enc}, arrays


def decode_indices(meta: dict[str, Any], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The index sets `encode_indices` made; ValueError for anything inconsistent."""
    tables, enc = _check_meta(meta, arrays, 1)
    return {t: decode_index(spec, part, t)
            for t, spec, part in zip(tables, enc, arrays, strict=True)}
