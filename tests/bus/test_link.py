"""A link under a fake clock (the virtual-time loop): exact timing, priority, backpressure."""

from __future__ import annotations

import asyncio

import pytest

from geoml.bus.link import Link, LinkSpec, Pending
from geoml.bus.vclock import run_virtual


class Recorder:
    """A next hop that records delivery times; can be told to refuse (pipe full)."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str]] = []
        self.blocked = False
        self.unblocked = asyncio.Event()

    def try_send(self, item: Pending) -> bool:
        if self.blocked:
            return False
        self.got.append((asyncio.get_running_loop().time(), item.ftype))
        return True

    async def send(self, item: Pending) -> bool:
        await self.unblocked.wait()
        self.got.append((asyncio.get_running_loop().time(), item.ftype))
        return True


def spec(rate_bps: float = 8e6, latency_s: float = 0.05, limit: int = 10**9) -> LinkSpec:
    return LinkSpec("a->b", "wan", rate_bps, latency_s, burst_bytes=1000,
                    queue_limit_bytes=limit, chunk_bytes=1000)


def item(ftype: str, size: int, control: bool = False, sender: bytes = b"s") -> Pending:
    return Pending([b""], ftype, "a/x/0", "b/y/0", size, control, sender)


def test_delivery_time_is_departure_plus_latency_pipelined() -> None:
    async def main() -> list[tuple[float, str]]:
        rec = Recorder()
        link = Link(spec(), rec)  # 1 MB/s, 50 ms
        link.start()
        for i in range(3):
            link.offer(item(f"f{i}", 100_000))
        await asyncio.sleep(1.0)
        await link.aclose()
        return rec.got

    got = run_virtual(main())
    # 1000 bytes of burst leave at once, then 1 MB/s: frame i's last byte leaves at
    # (100_000 * (i + 1) - 1000) / 1e6 s; each arrives 50 ms later; all three in flight.
    assert [t for _, t in got] == ["f0", "f1", "f2"]
    for i, (when, _) in enumerate(got):
        assert when == pytest.approx((100_000 * (i + 1) - 1000) / 1e6 + 0.05, abs=1e-9)


def test_control_overtakes_data_waiting_at_most_one_chunk() -> None:
    async def main() -> tuple[list[tuple[float, str]], float]:
        rec = Recorder()
        link = Link(spec(latency_s=0.0), rec)
        link.start()
        link.offer(item("big", 1_000_000))  # 1 s at 1 MB/s
        await asyncio.sleep(0.2505)
        t_ctl = asyncio.get_running_loop().time()
        link.offer(item("ctl", 100, control=True))
        await asyncio.sleep(2.0)
        await link.aclose()
        return rec.got, t_ctl

    got, t_ctl = run_virtual(main())
    assert [t for _, t in got] == ["ctl", "big"]
    ctl_at = got[0][0]
    # waits for the chunk on the wire (1000 B = 1 ms) and then its own 100 B (0.1 ms)
    assert t_ctl < ctl_at <= t_ctl + 0.001 + 0.0001 + 1e-9
    assert got[1][0] == pytest.approx(1.0 + 0.0001 - 0.001, abs=1e-6)


def test_full_queue_asks_to_pause_sender_and_resumes_when_drained() -> None:
    events: list[tuple[str, float]] = []

    async def main() -> None:
        rec = Recorder()
        loop = asyncio.get_running_loop()
        link = Link(spec(limit=250_000), rec,
                    on_congested=lambda _l, s: events.append(("pause", loop.time())),
                    on_drained=lambda _l: events.append(("resume", loop.time())))
        link.start()
        for i in range(4):
            link.offer(item(f"f{i}", 100_000))
        assert link.queued_bytes == 400_000  # never refused, never dropped
        await asyncio.sleep(1.0)
        await link.aclose()
        assert len(rec.got) == 4

    run_virtual(main())
    assert [e for e, _ in events] == ["pause", "pause", "resume"]
    # resumes once at most half the limit (125 kB) is queued, i.e. when f2 leaves the
    # queue: its last 1000-byte chunk starts when the chunk before it has left, at
    # (300_000 - 1000 burst - 1000) / 1e6 s
    assert events[-1][1] == pytest.approx(0.298, abs=1e-6)


def test_blocked_next_hop_keeps_order_and_loses_nothing() -> None:
    async def main() -> list[str]:
        rec = Recorder()
        link = Link(spec(rate_bps=float("inf"), latency_s=0.0), rec)
        link.start()
        rec.blocked = True
        for i in range(5):
            link.offer(item(f"f{i}", 10))
        await asyncio.sleep(0.1)
        rec.blocked = False
        rec.unblocked.set()
        link.offer(item("f5", 10))
        await asyncio.sleep(0.1)
        await link.aclose()
        return [t for _, t in rec.got]

    assert run_virtual(main()) == [f"f{i}" for i in range(6)]


def test_rate_zero_holds_frames_until_link_comes_back() -> None:
    async def main() -> list[tuple[float, str]]:
        rec = Recorder()
        link = Link(spec(latency_s=0.0), rec)
        link.start()
        link.set_rate(0)
        link.offer(item("f", 10_000))
        await asyncio.sleep(5.0)
        assert rec.got == [] and link.queued_bytes == 10_000
        link.set_rate(8e6)
        await asyncio.sleep(1.0)
        await link.aclose()
        return rec.got

    got = run_virtual(main())
    assert got[0][1] == "f" and got[0][0] == pytest.approx(5.009, abs=1e-6)
