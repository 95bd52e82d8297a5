"""Symmetric uniform quantisation of float values to 8-bit or 4-bit codes, one scale per
array: Streaming DiLoCo's outer gradients and topk's sparse values both use it.

Codes are integers in [-levels, levels] (levels 127 at 8 bits, 7 at 4 bits, two 4-bit codes
per byte, low nibble first, each stored as code + 8). A value decodes to code * scale in
float32. The scale is max |x| / levels (`pow2=False`), or the smallest power of two at or
above it (`pow2=True`, as a shared exponent in the microscaling formats): then code * scale
is exact, so an integer-valued update stays integer-valued and what the codes lost can be
kept and sent later without rounding.
"""

from __future__ import annotations

import math

import numpy as np

BITS = (0, 4, 8)  # 0: float32, not quantised


def check_bits(bits: int, option: str = "--diloco-bits") -> None:
    """Raise ValueError, naming `option`, unless `bits` is a supported code width."""
    if bits not in BITS:
        raise ValueError(f"{option} must be one of {', '.join(map(str, BITS))} "
                         f"(0: float32), got {bits}")


def levels_of(bits: int) -> int:
    """The largest code at `bits` bits (127 or 7)."""
    return (1 << (bits - 1)) - 1


def quantise(values: np.ndarray, bits: int, *, pow2: bool = False
             ) -> tuple[np.ndarray, float]:
    """(codes as uint8, scale): symmetric uniform codes of `bits` bits for `values`."""
    check_bits(bits)
    levels = levels_of(bits)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak <= 0:
        scale = 1.0
    elif pow2:
        scale = math.ldexp(1.0, math.ceil(math.log2(peak / levels)))
        if peak / scale > levels:  # log2 rounded down at an exact power
            scale *= 2
    else:
        scale = float(np.float32(peak / levels))
    q = np.clip(np.rint(values / np.float32(scale)), -levels, levels).astype(np.int8)
    if bits == 8:
        return q.view(np.uint8), scale
    nibbles = (q + 8).astype(np.uint8)  # 1..15
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(8))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8), scale


def dequantise(codes: np.ndarray, scale: float, bits: int, size: int) -> np.ndarray:
    """The float32 values `codes` stand for (ValueError if they cannot be `size` values)."""
    check_bits(bits)
    want = size if bits == 8 else (size + 1) // 2
    if codes.dtype != np.uint8 or codes.ndim != 1 or codes.size != want:
        raise ValueError(f"expected {want} uint8 codes for {size} values at {bits} bits, "
                         f"got {codes.dtype} {codes.shape}")
    if bits == 8:
        q = codes.view(np.int8).astype(np.float32)
    else:
        both = np.empty(codes.size * 2, np.int16)
        both[0::2] = codes & 0x0F
        both[1::2] = codes >> 4
        q = (both[:size] - 8).astype(np.float32)
    return q * np.float32(scale)


def check_scale(scale: object) -> float:
    """`scale` if it is a positive finite float (ValueError otherwise)."""
    if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive float, got {scale!r}")
    return scale
