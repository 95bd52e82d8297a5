"""Frame codec: a msgpack header plus raw buffers, one ZeroMQ part each (docs/PROTOCOL.md).

On the wire between a role and its router a frame is the multipart message
``[header, buffer_0, ..., buffer_n-1]`` (the router's ROUTER socket prepends the
sender's routing id). The header is a msgpack map; numpy arrays travel as their own
parts, described by ``bufs`` in the header, and are never pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .address import is_valid_address
from .errors import FrameError

PROTOCOL_VERSION = 1

CONTROL = 0
DATA = 1

#: Control frames overtake queued data, so they must stay small.
CONTROL_MAX_BYTES = 64 * 1024
#: Largest msgpack header accepted.
HEADER_MAX_BYTES = 64 * 1024
#: Default largest frame (header plus buffers) a router or endpoint accepts.
DEFAULT_MAX_FRAME_BYTES = 512 * 1024 * 1024
#: Largest number of buffers in one frame. A push carries up to two per table (rows and
#: values), so a model may have up to 512 parameter tensors (see check_tables_fit).
MAX_BUFFERS = 1024
MAX_DIMS = 8

#: dtypes allowed for buffers: explicit byte order, no objects, no pickles.
ALLOWED_DTYPES = frozenset(
    ["|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"]
)

_TYPE_MAX_LEN = 48

# Bus-level frame types (reserved prefix "bus.").
HELLO = "bus.hello"
WELCOME = "bus.welcome"
ERROR = "bus.error"
PAUSE = "bus.pause"
RESUME = "bus.resume"
BYE = "bus.bye"
CREDIT = "bus.credit"
#: A router tells its roles to send again what they keep: a router of the run restarted.
RESEND = "bus.resend"
#: Routers tell each other (flooded) that a router restarted.
RESTARTED = "bus.restarted"
#: router -> role or router: is this connection still open? (the receiver ignores it)
PING = "bus.ping"
BUS_TYPES = frozenset([HELLO, WELCOME, ERROR, PAUSE, RESUME, BYE, CREDIT, RESEND, RESTARTED,
                       PING])
#: End-to-end reliability between endpoints (bus/reliable.py): routed like any frame.
ACK = "bus.ack"
ROUTED_BUS_TYPES = frozenset([ACK])

_REQUIRED: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("t", str),
    ("src", str),
    ("dst", str),
    ("seq", int),
    ("clk", int),
    ("pri", int),
    ("meta", dict),
    ("bufs", list),
)
_OPTIONAL: dict[str, type | tuple[type, ...]] = {"ts": (float, int), "raw": bool, "rel": list}
_KNOWN_KEYS = frozenset(["v", *(k for k, _ in _REQUIRED), *_OPTIONAL])


def _reject_ext(code: int, data: bytes) -> Any:
    raise FrameError("bad_msgpack", f"msgpack extension type {code} is not allowed")


def encode_header(header: dict[str, Any]) -> bytes:
    """Serialise a header map (no validation; use `make_header` to build one)."""
    return _pack(header)


# One Packer for every header: msgpack.packb builds a new one per call. Its pack holds
# the GIL throughout (no `default` hook) and resets itself after an error.
_pack = msgpack.Packer(use_bin_type=True).pack


def make_header(
    ftype: str,
    src: str,
    dst: str,
    seq: int,
    *,
    clock: int = 0,
    priority: int = DATA,
    meta: dict[str, Any] | None = None,
    arrays: Sequence[np.ndarray] = (),
    sent_at: float | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """Build a header map describing `arrays` as buffers."""
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "t": ftype,
        "src": src,
        "dst": dst,
        "seq": seq,
        "clk": clock,
        "pri": priority,
        "meta": meta if meta is not None else {},
        "bufs": [[a.dtype.str, list(a.shape)] for a in arrays],
    }
    if sent_at is not None:
        header["ts"] = sent_at
    if raw:
        header["raw"] = True
    return header


def hello_problem(src: str, meta: dict[str, Any]) -> str | None:
    """What is wrong with a bus.hello's meta (None: nothing). A role says its role, its
    incarnation and whether it keeps a send window; a router its role and incarnation."""
    role = meta.get("role")
    expected = src.split("/")[1]
    if role != expected:
        return f"meta 'role' is {role!r}, but {src} is a {expected}"
    inc = meta.get("inc")
    if type(inc) is not int or not 0 < inc < 2**63:
        return f"meta 'inc' is {inc!r}, not a positive 63-bit incarnation number"
    if role != "router" and type(meta.get("credit")) is not bool:
        return f"meta 'credit' is {meta.get('credit')!r}, not true or false"
    return None


def _holds_extension(value: Any) -> bool:
    """Whether a decoded msgpack value holds an extension type anywhere. msgpack decodes
    its Timestamp extension itself, without the ext_hook that refuses every other one."""
    kind = type(value)
    if kind is dict:
        return any(type(v) in _CONTAINERS and _holds_extension(v) for v in value.values())
    if kind is list:
        return any(type(v) in _CONTAINERS and _holds_extension(v) for v in value)
    return kind is msgpack.Timestamp


#: What _holds_extension must look into (or is itself an extension).
_CONTAINERS = (dict, list, msgpack.Timestamp)
#: How msgpack encodes a Timestamp (extension type -1): fixext 4, fixext 8, or ext 8 of
#: 12 bytes. A header without any of these byte pairs holds none.
_TS4, _TS8, _TS12 = b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff"


def _may_hold_timestamp(buf: Any) -> bool:
    """Whether header bytes `buf` might encode a Timestamp: a scan in C, so that only
    such headers pay for _holds_extension's walk of meta."""
    data = buf if type(buf) is bytes else bytes(buf)
    return _TS4 in data or _TS8 in data or _TS12 in data


def decode_header(buf: Any, buffer_sizes: Sequence[int]) -> dict[str, Any]:
    """Decode and validate a header (bytes or any buffer: a zmq.Frame as received is read
    in place) against the sizes of the buffers that followed it.

    Raises FrameError with a stable reason code on any problem. Every frame pays for
    this twice (at the router and at the receiving endpoint), so each check has a cheap
    form for the common case and falls back to the precise one only to say what is wrong.
    """
    if len(buf) > HEADER_MAX_BYTES:
        raise FrameError("too_large", f"header of {len(buf)} bytes > {HEADER_MAX_BYTES}")
    try:
        header = _unpackb(buf, raw=False, ext_hook=_reject_ext, strict_map_key=True)
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types for corrupt input
        raise FrameError("bad_msgpack",
                         f"header is not valid msgpack ({type(exc).__name__})") from None
    if type(header) is not dict:
        raise FrameError("bad_header", f"header is a {type(header).__name__}, not a map")
    version = header.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise FrameError("bad_version",
                         f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    try:
        ftype, src, dst = header["t"], header["src"], header["dst"]
        seq, pri, meta = header["seq"], header["pri"], header["meta"]
        # msgpack builds exact types, so `type(...) is` is the check isinstance makes here
        plain = (type(ftype) is str and type(src) is str and type(dst) is str
                 and type(seq) is int and type(header["clk"]) is int and type(pri) is int
                 and type(meta) is dict and type(header["bufs"]) is list)
    except KeyError:
        plain = False
    if not plain:
        _check_required(header)
    rel = None
    if len(header) != _PLAIN_KEYS:
        _check_optional(header)
        rel = header.get("rel")
    if len(header) > len(_KNOWN_KEYS) or not _KNOWN_KEYS.issuperset(header):
        unknown = sorted(str(k) for k in header if k not in _KNOWN_KEYS)
        raise FrameError("bad_field", f"unknown header field(s) {unknown}")
    if meta and _may_hold_timestamp(buf) and _holds_extension(meta):
        raise FrameError("bad_msgpack", "meta holds a msgpack extension type (a Timestamp); "
                         "meta takes plain msgpack values only")
    if ftype not in _GOOD_TYPES:
        _check_type(ftype)
    if src not in _GOOD_ADDRESSES:
        if not is_valid_address(src):
            raise FrameError("bad_address", f"source {src[:80]!r} is not region/role/index")
        _remember(_GOOD_ADDRESSES, src)
    if dst not in _GOOD_ADDRESSES:
        if not is_valid_address(dst):
            raise FrameError("bad_address", f"destination {dst[:80]!r} is not "
                             "region/role/index")
        _remember(_GOOD_ADDRESSES, dst)
    if seq < 0 or seq >= 2**64:
        raise FrameError("bad_field", "seq must be an unsigned 64-bit integer")
    if pri != DATA and pri != CONTROL:
        raise FrameError("bad_field", f"priority {pri} is neither 0 (control) nor 1")
    if rel is not None and not _good_rel(rel):
        raise FrameError("bad_field", "rel must be [incarnation, seq, floor], positive "
                         "integers with floor <= seq")
    _check_buffers(header["bufs"], buffer_sizes)
    if pri == CONTROL:
        total = len(buf) + sum(buffer_sizes)
        if total > CONTROL_MAX_BYTES:
            raise FrameError("too_large", f"control frame of {total} bytes > {CONTROL_MAX_BYTES}")
    return header


_unpackb = msgpack.unpackb
#: Header size in keys without optional fields (version plus the required ones).
_PLAIN_KEYS = 1 + len(_REQUIRED)
#: Addresses and frame types already found well-formed: a set lookup instead of a regex
#: per frame. Bounded, so that a stream of distinct names cannot grow them without end.
_GOOD_ADDRESSES: set[str] = set()
_GOOD_TYPES: set[str] = set()
_GOOD_NAMES_MAX = 1 << 16
#: Bytes per element of each allowed dtype.
_DTYPES = {d: np.dtype(d) for d in ALLOWED_DTYPES}
_ITEMSIZE = {d: t.itemsize for d, t in _DTYPES.items()}


def _good_rel(rel: list[Any]) -> bool:
    if len(rel) != 3:
        return False
    inc, seq, floor = rel
    return (type(inc) is int and type(seq) is int and type(floor) is int
            and 0 < inc < 2**63 and 0 < seq < 2**63 and 0 < floor <= seq)


def _remember(seen: set[str], name: str) -> None:
    if len(seen) >= _GOOD_NAMES_MAX:
        seen.clear()
    seen.add(name)


def _check_required(header: dict[str, Any]) -> None:
    for key, kind in _REQUIRED:
        value = header.get(key)
        if value is None:
            raise FrameError("missing_field", f"header field {key!r} is missing")
        if not isinstance(value, kind) or type(value) is bool:
            raise FrameError("bad_field", f"header field {key!r} has type {type(value).__name__}")


def _check_optional(header: dict[str, Any]) -> None:
    for key, kind in _OPTIONAL.items():
        if key in header and (not isinstance(header[key], kind) or
                              (kind is not bool and type(header[key]) is bool)):
            raise FrameError("bad_field", f"header field {key!r} has type "
                             f"{type(header[key]).__name__}")


def _check_type(ftype: str) -> None:
    if not ftype or len(ftype) > _TYPE_MAX_LEN or not ftype.isascii() or not ftype.isprintable():
        raise FrameError("bad_field", f"frame type {ftype[:60]!r} is not a short ASCII name")
    _remember(_GOOD_TYPES, ftype)


def check_tables_fit(names: Sequence[str], buffers_per_table: int = 2) -> None:
    """ValueError, saying why, when a frame carrying every table (`buffers_per_table` arrays
    each, their names in its meta) would exceed MAX_BUFFERS or HEADER_MAX_BYTES."""
    buffers = buffers_per_table * len(names)
    # a buffer's description (["<f4", [rows, cols]]) is at most ~24 bytes of msgpack
    header = sum(len(n.encode()) + 2 for n in names) + 24 * buffers + 1024
    if buffers > MAX_BUFFERS or header > HEADER_MAX_BYTES:
        raise ValueError(
            f"the model has {len(names)} tables (parameter tensors); a frame carrying all "
            f"of them would need {buffers} buffers (at most {MAX_BUFFERS}) and a header of "
            f"~{header} bytes (at most {HEADER_MAX_BYTES}): merge parameters (e.g. one "
            f"tensor per layer) or use shorter names")


def _check_buffers(bufs: list[Any], sizes: Sequence[int]) -> None:
    if len(bufs) != len(sizes):
        raise FrameError("buffer_mismatch",
                         f"header describes {len(bufs)} buffer(s) but {len(sizes)} followed")
    if len(bufs) > MAX_BUFFERS:
        raise FrameError("buffer_mismatch", f"{len(bufs)} buffers > {MAX_BUFFERS}")
    for i in range(len(bufs)):
        desc = bufs[i]
        if type(desc) is not list or len(desc) != 2:
            raise FrameError("bad_field", f"bufs[{i}] is not [dtype, shape]")
        dtype, shape = desc
        itemsize = _ITEMSIZE.get(dtype) if type(dtype) is str else None
        if itemsize is None:
            raise FrameError("bad_field", f"bufs[{i}] dtype {str(dtype)[:20]!r} not allowed")
        if type(shape) is not list or len(shape) > MAX_DIMS:
            raise FrameError("bad_field", f"bufs[{i}] shape is not a list of sizes")
        expected = itemsize
        for d in shape:
            if type(d) is not int or not 0 <= d < 2**40:
                raise FrameError("bad_field", f"bufs[{i}] shape is not a list of sizes")
            expected *= d
        size = sizes[i]
        if expected != size:
            raise FrameError("buffer_mismatch",
                             f"bufs[{i}] needs {expected} bytes for {dtype}{shape}, got {size}")


def arrays_from_parts(header: dict[str, Any], parts: Sequence[Any]) -> list[np.ndarray]:
    """View received buffers (zmq Frames or any buffer) as numpy arrays without copying."""
    out = []
    for (dtype, shape), part in zip(header["bufs"], parts, strict=True):
        arr = np.frombuffer(part, dtype=_DTYPES[dtype])
        out.append(arr if len(shape) == 1 else arr.reshape(shape))
    return out


def contiguous(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Arrays in the byte order and layout the wire needs (copies only if needed)."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.str not in ALLOWED_DTYPES:
            a = a.astype(a.dtype.newbyteorder("<"))
            if a.dtype.str not in ALLOWED_DTYPES:
                raise FrameError("bad_field", f"dtype {a.dtype} cannot be sent")
        out.append(np.ascontiguousarray(a))
    return out


@dataclass(slots=True)
class Message:
    """A received application frame: its header fields and its arrays."""

    type: str
    src: str
    dst: str
    seq: int
    clock: int
    priority: int
    meta: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list)
    sent_at: float | None = None
    raw: bool = False
    nbytes: int = 0

    @classmethod
    def from_wire(cls, header: dict[str, Any], parts: Sequence[Any], nbytes: int) -> Message:
        """Build from a validated header and its buffer parts."""
        get = header.get
        return cls(header["t"], header["src"], header["dst"], header["seq"], header["clk"],
                   header["pri"], header["meta"], arrays_from_parts(header, parts),
                   get("ts"), get("raw", False), nbytes)
