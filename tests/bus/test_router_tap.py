"""The tap's batch packing (sans-I/O; the tap through real sockets is in test_router)."""

from __future__ import annotations

import msgpack
import pytest


@pytest.mark.parametrize("n", [1, 15, 16, 17, 255, 256])
def test_a_packed_tap_batch_is_its_events_one_after_another(n: int) -> None:
    from geoml.bus.router_tap import pack_events

    batch = [(0.5 + i, "a->b", "wan", "a/w/0", "b/w/0", "t.x", i, 0.0, 7) for i in range(n)]
    assert pack_events(msgpack.Packer(), batch) == b"".join(
        msgpack.packb(list(e)) for e in batch)
