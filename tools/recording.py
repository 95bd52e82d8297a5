"""Tap recordings: a msgpack stream on disk (docs/PROTOCOL.md section 8), and its report.

A recording is a sequence of msgpack objects: one header map first, then one array per
tap event (as published by the routers), then optionally one trailer map. Writing goes
through a small buffer, so memory stays bounded however long the run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from geoml.bus import GeomlError, Topology

from .traffic import BadTapEvent, TapEvent, TrafficStats, capacities, link_capacity

FORMAT = "geoml.tap.recording"
VERSION = 1


class RecordingError(GeomlError):
    """A recording file that cannot be read."""


def topology_header(topology: Topology) -> dict[str, Any]:
    """The header fields that describe the links of `topology`."""
    return {"topology": topology.name, "regions": list(topology.region_names),
            "capacity_bps": capacities(topology)}


class Recorder:
    """Appends tap events to a file; `close(trailer)` finishes it."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(path, "wb", buffering=1 << 16)  # noqa: SIM115
        self._packer = msgpack.Packer()
        self._file.write(self._packer.pack({"format": FORMAT, "version": VERSION, **header}))
        self.events = 0

    def write_raw(self, packed_events: bytes, count: int = 1) -> None:
        """Append `count` events exactly as a router packed them (a msgpack stream)."""
        self._file.write(packed_events)
        self.events += count

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        """Write the trailer (if any) and close."""
        if self._file.closed:
            return
        self._file.write(self._packer.pack({"end": True, "events": self.events,
                                            **(trailer or {})}))
        self._file.close()


def read_recording(path: Path) -> tuple[dict[str, Any], Iterator[TapEvent],
                                        dict[str, Any]]:
    """(header, events, trailer); the trailer dict fills in once the events are consumed."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open ({exc.strerror})") from None
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=16 << 20)
    try:
        header = next(unpacker)
    except (StopIteration, ValueError, msgpack.UnpackException) as exc:
        f.close()
        raise RecordingError(f"{path}: empty or not a msgpack stream ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        f.close()
        raise RecordingError(f"{path}: not a geoml tap recording (no {FORMAT} header)")
    if header.get("version") != VERSION:
        f.close()
        raise RecordingError(f"{path}: recording version {header.get('version')}, this "
                             f"geoml reads version {VERSION}")
    trailer: dict[str, Any] = {}

    def events() -> Iterator[TapEvent]:
        n = 0
        try:
            for obj in unpacker:
                n += 1
                if isinstance(obj, dict):
                    trailer.update(obj)
                    continue
                try:
                    yield TapEvent.parse(obj)
                except BadTapEvent as exc:
                    raise RecordingError(f"{path}: record {n}: {exc}") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise RecordingError(f"{path}: corrupt after record {n} ({exc})") from None
        finally:
            f.close()

    return header, events(), trailer


class TimeBins:
    """Bytes per time bin for every link; bins double in width (and merge) whenever the
    recording outgrows MAX_BINS of them, so memory is bounded however long the run."""

    MAX_BINS = 1000

    def __init__(self, width_s: float = 0.05) -> None:
        self.width = width_s
        self.t0: float | None = None
        self.series: dict[str, Counter[int]] = {}

    def add(self, link: str, t: float, nbytes: int) -> None:
        if self.t0 is None:
            self.t0 = t
        idx = int((t - self.t0) // self.width)
        while idx >= self.MAX_BINS:
            self.width *= 2
            idx //= 2
            for name, bins in self.series.items():
                merged: Counter[int] = Counter()
                for i, n in bins.items():
                    merged[i // 2] += n
                self.series[name] = merged
        self.series.setdefault(link, Counter())[idx] += nbytes


def build_report(path: Path, out: Path) -> dict[str, Any]:
    """Read a recording, write summary.json, traffic_matrix.png, utilisation.png and
    frame_types.png to `out`; returns the summary."""
    header, events, trailer = read_recording(path)
    stats = TrafficStats()
    regions: list[str] = list(header.get("regions", []))
    matrix: Counter[tuple[str, str]] = Counter()
    bins = TimeBins()
    for n, ev in enumerate(events):
        stats.add(ev)
        bins.add(ev.link, ev.time, ev.nbytes)
        if n % 10_000 == 0:
            stats.trim(ev.time)  # the live window is not needed here; keep memory flat
        if ev.kind == "wan":
            a, b = ev.link.split("->")
            matrix[(a, b)] += ev.nbytes
    for a, b in matrix:
        for r in (a, b):
            if r not in regions:
                regions.append(r)
    links = {}
    for name, lt in sorted(stats.links.items()):
        cap = link_capacity(header.get("capacity_bps", {}), name)
        link_bins = bins.series[name]
        peak = max(link_bins.values()) * 8 / bins.width if link_bins else 0.0
        links[name] = {"kind": lt.kind, "frames": lt.frames, "bytes": lt.bytes,
                       "bytes_by_type": dict(lt.bytes_by_type),
                       "frames_by_type": dict(lt.frames_by_type),
                       "capacity_bps": None if math.isnan(cap) else cap,
                       "peak_utilisation": None if math.isnan(cap) or math.isinf(cap)
                       else peak / cap,
                       "queue_delay_max_ms": lt.delay_max_s * 1e3,
                       "queued_max_bytes": lt.queued_max}
    summary = {
        "recording": str(path), "topology": header.get("topology"), "events": stats.events,
        "complete": bool(trailer.get("end")) and not trailer.get("aborted"),
        "tap_dropped": trailer.get("tap_dropped"),
        "wan_bytes": sum(v["bytes"] for v in links.values() if v["kind"] == "wan"),
        "lan_bytes": sum(v["bytes"] for v in links.values() if v["kind"] == "lan"),
        "links": links, "bytes_by_type": dict(stats.by_type),
        "region_matrix_bytes": {f"{a}->{b}": n for (a, b), n in sorted(matrix.items())},
        "top_talkers": [{"src": s, "dst": d, "bytes": n}
                        for (s, d), n in stats.talkers.most_common(20)],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_matrix(regions, matrix, out / "traffic_matrix.png")
    summary["utilisation_bin_s"] = bins.width
    _plot_utilisation(bins.series, header, stats, bins.width, out / "utilisation.png")
    _plot_types(stats.by_type, out / "frame_types.png")
    return summary


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_matrix(regions: list[str], matrix: Counter[tuple[str, str]], path: Path) -> None:
    plt = _plt()
    n = max(1, len(regions))
    grid = np.zeros((n, n))
    for (a, b), nbytes in matrix.items():
        grid[regions.index(a), regions.index(b)] = nbytes / 1e6
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.55 * n), dpi=110)
    im = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(regions)), regions, rotation=60, ha="right")
    ax.set_yticks(range(len(regions)), regions)
    ax.set_xlabel("to region")
    ax.set_ylabel("from region")
    ax.set_title("WAN traffic (MB, per link hop)")
    fig.colorbar(im, ax=ax, label="MB")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_utilisation(series: dict[str, Counter[int]], header: dict[str, Any],
                      stats: TrafficStats, bin_s: float, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    wan = [n for n in series if stats.links[n].kind == "wan"] or list(series)
    for name in sorted(wan, key=lambda n: -stats.links[n].bytes)[:12]:
        cap = link_capacity(header.get("capacity_bps", {}), name)
        bins = series[name]
        xs = np.arange(max(bins) + 1) if bins else np.arange(1)
        ys = np.array([bins.get(int(i), 0) * 8 / bin_s for i in xs])
        if math.isfinite(cap) and cap > 0:
            ys = ys / cap * 100
        ax.plot(xs * bin_s, ys, label=name, linewidth=1.2, marker="." if len(xs) < 30 else None)
    ax.set_xlabel("time since first event (s)")
    ax.set_ylabel("utilisation (% of capacity)")
    ax.set_title(f"link utilisation (12 busiest links, {bin_s * 1e3:.0f} ms bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_types(by_type: Counter[str], path: Path) -> None:
    plt = _plt()
    items = by_type.most_common(15)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * max(1, len(items))), dpi=110)
    ax.barh([t for t, _ in items][::-1], [b / 1e6 for _, b in items][::-1])
    ax.set_xlabel("MB (summed over every link hop)")
    ax.set_title("traffic by frame type")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
