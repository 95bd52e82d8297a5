"""The SSP gate on its own (sans-I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoml.roles.ssp import ClockError, SSPGate


def test_bsp_read_waits_for_every_worker_to_finish_the_previous_clock() -> None:
    gate: SSPGate[str] = SSPGate(["w0", "w1"], staleness=0)
    assert gate.read("w0", 0, "r0")
    assert gate.advance("w0", 0) == []
    assert not gate.read("w0", 1, "r1")  # w1 has not finished clock 0
    assert gate.waiting == 1
    assert gate.advance("w1", 0) == ["r1"]
    assert gate.waiting == 0


def test_ssp_lets_a_worker_run_s_clocks_ahead_and_no_further() -> None:
    gate: SSPGate[int] = SSPGate(["fast", "slow"], staleness=2)
    for c in range(3):
        assert gate.read("fast", c, c)
        gate.advance("fast", c)
    assert not gate.read("fast", 3, 3)  # needs slow at clock >= 1
    assert gate.advance("slow", 0) == [3]


def test_finished_workers_do_not_hold_others_back() -> None:
    gate: SSPGate[str] = SSPGate(["a", "b"], staleness=0)
    gate.advance("a", 0)
    assert not gate.read("a", 1, "x")
    assert gate.finish("b") == ["x"]
    gate.finish("a")
    assert gate.all_done


def test_clock_errors_are_precise() -> None:
    gate: SSPGate[str] = SSPGate(["a"], staleness=1)
    with pytest.raises(ClockError, match="completed iteration 3, expected 0"):
        gate.advance("a", 3)
    with pytest.raises(ClockError, match="unknown worker 'z'"):
        gate.read("z", 0, "t")
    gate.finish("a")
    with pytest.raises(ClockError, match="after it finished"):
        gate.advance("a", 0)
    with pytest.raises(ValueError, match="staleness"):
        SSPGate(["a"], staleness=-1)


@settings(max_examples=200, deadline=None)
@given(staleness=st.integers(0, 3), n_workers=st.integers(1, 4),
       schedule=st.lists(st.integers(0, 3), min_size=1, max_size=80))
def test_no_schedule_violates_the_bound(staleness: int, n_workers: int,
                                        schedule: list[int]) -> None:
    """Workers read then push in a random interleaving; every served read is within s."""
    names = [f"w{i}" for i in range(n_workers)]
    gate: SSPGate[str] = SSPGate(names, staleness=staleness, record=True)
    state = dict.fromkeys(names, "read")  # next action: read, or push after a served read
    clocks = dict.fromkeys(names, 0)
    for pick in schedule:
        w = names[pick % n_workers]
        if state[w] == "read":
            state[w] = "push" if gate.read(w, clocks[w], w) else "blocked"
        elif state[w] == "push":
            for released in gate.advance(w, clocks[w]):
                state[released] = "push"
            clocks[w] += 1
            state[w] = "read"
    for served in gate.served:
        assert served.min_clock >= served.clock - staleness
    assert "blocked" not in state.values() or gate.waiting > 0
