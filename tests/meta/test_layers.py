"""The import graph: layers import downward only, and no module imports itself round."""

from __future__ import annotations

from ..layers import report


def test_no_import_circles_and_no_upward_imports() -> None:
    found = report()
    assert found["circles"] == []
    # the topology generators (make_*.py) are scripts that use the bus's loader to check
    # what they write; nothing imports them
    assert [u for u in found["upward_imports"]
            if not u.startswith("geoml.topologies.make_")] == []
