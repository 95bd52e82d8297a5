"""The traffic inspector: its data functions, recordings through the real bus, and the live
view read back from a pseudo-terminal."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from geoml.bus import load_topology
from geoml.inspector import bar, render
from geoml.recording import RecordingError, TimeBins, build_report, read_recording
from geoml.systems import RunConfig, run_system
from geoml.traffic import (
    BadTapEvent,
    EventFilter,
    TapEvent,
    TrafficStats,
    split_tap_message,
    unpack_events,
)

from ..conftest import Deadline, free_base_port, wait_for_line


def ev(link: str, src: str, dst: str, nbytes: int = 100, t: float = 0.0,
       ftype: str = "ps.push", kind: str = "wan") -> TapEvent:
    return TapEvent(t, link, kind, src, dst, ftype, nbytes, 0.001, 0)


def test_tap_events_parse_strictly_but_accept_trailing_fields() -> None:
    good = [1.5, "a->b", "wan", "a/w/0", "b/ps/0", "ps.push", 10, 0.0, 5, "future"]
    assert TapEvent.parse(good).queued == 5
    assert TapEvent.parse(good[:8]).queued == 0
    with pytest.raises(BadTapEvent, match="at least 8"):
        TapEvent.parse([1, 2])
    with pytest.raises(BadTapEvent, match="must be strings"):
        TapEvent.parse([1.0, 3, "wan", "a/w/0", "b/ps/0", "t", 1, 0.0])
    with pytest.raises(BadTapEvent, match="bad type"):
        TapEvent.parse([1.0, "a->b", "wan", "a/w/0", "b/ps/0", "t", "10", 0.0])


def test_tap_batches_are_checked_against_their_count() -> None:
    event = [0.0, "a->b", "wan", "a/w/0", "b/p/0", "t", 9, 0.0, 0]
    stream = msgpack.packb(event) * 2
    count, got = split_tap_message([b"geoml.tap.1", (2).to_bytes(4, "little"), stream])
    assert [e.nbytes for e in unpack_events(got, count)] == [9, 9]
    with pytest.raises(BadTapEvent, match="holds 2 events, its count says 3"):
        unpack_events(stream, 3)
    with pytest.raises(BadTapEvent, match="a tap message is"):
        split_tap_message([b"geoml.tap.1", stream])


def test_talkers_count_a_frame_once_across_its_hops_and_filters_apply() -> None:
    stats = TrafficStats()
    # a/w/0 -> c/ps/0 via hub b: three hops, one talker entry.
    stats.add(ev("a->b", "a/w/0", "c/ps/0"))
    stats.add(ev("b->c", "a/w/0", "c/ps/0"))
    stats.add(ev("c/lan->c/ps/0", "a/w/0", "c/ps/0", kind="lan"))
    stats.add(ev("a/lan->a/ps/0", "a/w/0", "a/ps/0", kind="lan"))
    assert stats.talkers == {("a/w/0", "c/ps/0"): 100, ("a/w/0", "a/ps/0"): 100}
    assert stats.link_bytes()["b->c"] == 100 and stats.by_type["ps.push"] == 400
    only_c = TrafficStats(EventFilter(region="c"))
    for e in (ev("a->b", "a/w/0", "c/ps/0"), ev("a/lan->a/ps/0", "a/w/0", "a/ps/0")):
        only_c.add(e)
    assert only_c.events == 1 and only_c.filtered_out == 1
    assert EventFilter(role="ps", ftype="ps.p")(ev("a->b", "a/w/0", "c/ps/0"))
    assert not EventFilter(ftype="ps.read")(ev("a->b", "a/w/0", "c/ps/0"))


def test_view_shows_bars_and_unreachable_routers() -> None:
    assert bar(1.0, 4) == "████" and bar(0.0, 4) == "    " and bar(0.5, 4) == "██  "
    stats = TrafficStats()
    for i in range(10):
        stats.add(ev("a->b", "a/w/0", "b/ps/0", nbytes=125_000, t=i * 0.1))
    stats.trim(0.95)
    text = render(stats, {"a->b": 10e6}, {"a": "connected", "b": "not reachable at x"})
    assert "!! router b: not reachable at x" in text and "router a" not in text
    line = next(x for x in text.splitlines() if x.startswith("a->b"))
    assert "██████" in line and "10.0 /   10.0" in line


def test_time_bins_stay_bounded() -> None:
    bins = TimeBins(width_s=0.01)
    for i in range(100_000):
        bins.add("l", i * 0.01, 1)
    assert len(bins.series["l"]) <= TimeBins.MAX_BINS
    assert sum(bins.series["l"].values()) == 100_000


@pytest.mark.asyncio
async def test_report_link_bytes_equal_the_runs_own_summary_exactly(tmp_path: Path) -> None:
    rec = tmp_path / "run.tap"
    result = await asyncio.wait_for(run_system(RunConfig(
        load_topology("ss_wan"), "baseline", "softmax-digits", iterations=3, quiet=True,
        record=rec, out=tmp_path / "run")), 60)
    report = build_report(rec, tmp_path / "report")
    run_links = json.loads((tmp_path / "run" / "summary.json").read_text())["link_bytes"]
    assert {k: v["bytes"] for k, v in report["links"].items()} == \
        {k: v for k, v in run_links.items() if v}
    assert report["complete"] and report["tap_dropped"] == {"Singapore": 0, "SaoPaulo": 0}
    assert report["wan_bytes"] == result.summary["wan_bytes"]
    for name in ("traffic_matrix.png", "utilisation.png", "frame_types.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000


def test_bad_and_truncated_recordings(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tap"
    junk.write_bytes(msgpack.packb({"hello": 1}))
    with pytest.raises(RecordingError, match="not a geoml tap recording"):
        read_recording(junk)
    with pytest.raises(RecordingError, match="cannot open"):
        read_recording(tmp_path / "missing.tap")
    good = tmp_path / "good.tap"
    header = {"format": "geoml.tap.recording", "version": 1, "regions": ["a", "b"]}
    event = msgpack.packb([0.0, "a->b", "wan", "a/w/0", "b/p/0", "t", 9, 0.0, 0])
    good.write_bytes(msgpack.packb(header) + event * 3 + msgpack.packb({"end": True}))
    cut = tmp_path / "cut.tap"
    cut.write_bytes(good.read_bytes()[:-20])  # the run died while recording
    summary = build_report(cut, tmp_path / "cut")
    assert not summary["complete"] and summary["events"] >= 1
    wrong = tmp_path / "wrong.tap"
    wrong.write_bytes(msgpack.packb(header) + msgpack.packb([1, 2, 3]))
    with pytest.raises(RecordingError, match="record 1: a tap event is an array"):
        build_report(wrong, tmp_path / "wrong")


def _read_pty(master: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode("utf-8", "replace")


def test_live_view_in_a_real_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoml.cli", "run", "--topology", "tiny", "--system",
         "baseline", "--workload", "mf-movielens", "--iterations", "3", "--inspect",
         "--out", str(tmp_path / "r")],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    try:
        deadline = Deadline()
        screen = _read_pty(master, proc, deadline.left())
        assert proc.wait(timeout=deadline.left()) == 0, screen[-2000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert "\x1b[H\x1b[2J" in screen  # redrawn in place, as on a terminal
    assert screen.count("rate vs capacity") >= 2  # refreshed, not printed once
    assert "east->west" in screen and "west->east" in screen
    assert "█" in screen  # a 10 Mbit/s link saturated by MF pushes shows a full bar
    assert "[baseline] clock" in screen and "top talkers:" in screen


def test_inspector_names_a_router_it_cannot_reach(tmp_path: Path) -> None:
    port = free_base_port()
    topo = tmp_path / "two.toml"
    topo.write_text(f'name = "two"\n[defaults]\nhost = "127.0.0.1"\nbase_port = {port}\n'
                    '[[regions]]\nname = "east"\n[[regions]]\nname = "west"\nlon = 10.0\n'
                    '[[links]]\nbetween = ["east", "west"]\nrate_mbps = 8\n')
    router = subprocess.Popen([sys.executable, "-m", "geoml.cli", "router", "--topology",
                               str(topo), "--region", "east"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(router, "listening", 30)
        inspect = subprocess.run(
            [sys.executable, "-m", "geoml.cli", "inspect", "--topology", str(topo),
             "--seconds", "2.5"], capture_output=True, text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stderr
        last = inspect.stdout.strip().split("-" * 40)[-2]
        assert f"!! router west: not reachable at tcp://127.0.0.1:{port + 3}" in last
        assert "router east" not in last
        # a `geoml launch` run's routers: where its endpoints file says they listen
        endpoints = tmp_path / "endpoints.json"
        endpoints.write_text(json.dumps({
            "east": {"host": "127.0.0.1", "port": port, "tap_port": port + 1},
            "west": {"host": "127.0.0.1", "port": port + 10, "tap_port": port + 11}}))
        inspect = subprocess.run(
            [sys.executable, "-m", "geoml.cli", "inspect", "--topology", str(topo),
             "--endpoints", str(endpoints), "--seconds", "1.5"],
            capture_output=True, text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stderr
        last = inspect.stdout.strip().split("-" * 40)[-2]
        assert f"!! router west: not reachable at tcp://127.0.0.1:{port + 11}" in last
        assert "router east" not in last
    finally:
        router.terminate()
        router.communicate(timeout=30)


def test_inspector_reads_a_keyed_tap_with_an_inspector_key_only(tmp_path: Path) -> None:
    """`geoml inspect --keys`: a router with CurveZMQ keys; the inspector key reaches its
    tap, a worker's key is refused and the view says why."""
    port = free_base_port()
    topo = tmp_path / "one.toml"
    topo.write_text(f'name = "one"\n[defaults]\nhost = "127.0.0.1"\nbase_port = {port}\n'
                    '[[regions]]\nname = "east"\n')
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "geoml.cli", "keys", "--topology", str(topo),
                    "--out", str(keys)], check=True, capture_output=True, timeout=60)
    router = subprocess.Popen([sys.executable, "-m", "geoml.cli", "router", "--topology",
                               str(topo), "--region", "east", "--keys", str(keys)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(router, "listening", 30)
        views = {}
        for key in ("east.inspector", "east.worker"):
            inspect = subprocess.run(
                [sys.executable, "-m", "geoml.cli", "inspect", "--topology", str(topo),
                 "--keys", str(keys), "--key", key, "--seconds", "2.5"],
                capture_output=True, text=True, timeout=60)
            assert inspect.returncode == 0, inspect.stderr
            views[key] = inspect.stdout.strip().split("-" * 40)[-2]
        assert "router east" not in views["east.inspector"]
        assert ("!! router east: refused at" in views["east.worker"]
                and "key east.worker" in views["east.worker"])
    finally:
        router.terminate()
        router.communicate(timeout=30)
