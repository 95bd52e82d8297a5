"""Token bucket under a fake clock (sans-I/O)."""

from __future__ import annotations

import math

import pytest

from geoml.bus.bucket import TokenBucket


def test_burst_then_rate() -> None:
    b = TokenBucket(rate=1000.0, burst=500.0, now=0.0)
    assert b.reserve(500, 0.0) == 0.0  # the burst leaves at once
    assert b.reserve(1000, 0.0) == pytest.approx(1.0)  # then one second per 1000 bytes
    assert b.reserve(1000, 0.0) == pytest.approx(2.0)  # pipelined behind the previous


def test_late_caller_keeps_earned_tokens_up_to_burst() -> None:
    b = TokenBucket(rate=1000.0, burst=2000.0, now=0.0)
    b.reserve(2000, 0.0)
    # Caller wakes 0.5 s late: 500 bytes of tokens were earned meanwhile and are kept.
    assert b.reserve(500, 0.5) == 0.5
    assert b.reserve(1000, 0.5) == pytest.approx(1.5)


def test_long_run_rate_is_exact_whatever_the_wakeups() -> None:
    b = TokenBucket(rate=1e6, burst=65536, now=0.0)
    now = 0.0
    sent = 0
    while now < 10.0:
        t = b.reserve(65536, now)
        sent += 65536
        now = t + 0.0007  # every wake-up 0.7 ms late
    assert sent / now == pytest.approx(1e6, rel=0.01)


def test_unshaped_and_down() -> None:
    b = TokenBucket(rate=math.inf, burst=1, now=0.0)
    assert b.reserve(10**9, 3.0) == 3.0
    down = TokenBucket(rate=0.0, burst=100, now=0.0)
    assert down.departure_time(200, 1.0) == math.inf
    with pytest.raises(ValueError):
        down.reserve(200, 1.0)
    down.set_rate(100.0, 2.0)
    assert down.reserve(200, 2.0) == pytest.approx(3.0)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=10)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_overflow_is_the_rate_lost_to_the_burst_cap_after_a_late_wake_up() -> None:
    bucket = TokenBucket(rate=1000.0, burst=100.0, now=0.0)
    assert bucket.reserve(100, 0.0) == 0.0  # the burst, at once: no tokens left
    assert bucket.reserve(500, 0.0) == 0.5  # paid at 0.5 s
    assert bucket.overflow_s(0.5) == 0.0  # on time
    assert bucket.overflow_s(0.55) == 0.0  # 50 bytes earned late: within the burst
    assert bucket.overflow_s(0.8) == pytest.approx(0.2)  # 300 earned, 100 kept
    assert TokenBucket(rate=float("inf"), burst=1.0).overflow_s(5.0) == 0.0


@pytest.mark.parametrize("rate", [200_000.0, math.inf])
def test_take_now_is_reserve_when_the_bytes_can_leave_now(rate: float) -> None:
    import random

    rng = random.Random(7)
    fast, slow = TokenBucket(rate, 3000.0, 0.0), TokenBucket(rate, 3000.0, 0.0)
    now, taken, refused = 0.0, 0, 0
    for _ in range(2000):
        now += rng.choice([0.0, 0.0005, 0.002, 0.01])
        nbytes = rng.randint(1, 2500)
        leaves_now = slow.departure_time(nbytes, now) <= now
        assert fast.take_now(nbytes, now) is leaves_now
        if leaves_now:
            assert slow.reserve(nbytes, now) == now
            taken += 1
        else:
            refused += 1
        # both buckets agree on what comes next, taken or not
        assert fast.departure_time(1000, now) == pytest.approx(slow.departure_time(1000, now))
    assert taken > 100 and (refused > 100 or rate == math.inf)


def test_take_now_refuses_on_a_link_that_is_down() -> None:
    b = TokenBucket(rate=1000.0, burst=500.0, now=0.0)
    b.set_rate(0.0, 0.0)
    assert b.take_now(10, 1.0) is False
