"""The import graph: layers import downward only, and no module imports itself round."""

from __future__ import annotations

from pathlib import Path

from ..layers import report


def test_no_import_circles_and_no_upward_imports() -> None:
    found = report()
    assert found["circles"] == []
    # the topology generators (make_*.py) are scripts that use the bus's loader to check
    # what they write; nothing imports them
    assert [u for u in found["upward_imports"]
            if not u.startswith("geoml.topologies.make_")] == []


def test_importing_a_module_of_a_package_counts_the_package_s_init(tmp_path: Path) -> None:
    # the circle geoml.role_main had: role_main imported cli.opts, whose package's
    # __init__ imported cli.process, which imported role_main back
    files = {"__init__.py": "", "role_main.py": "from .cli.opts import x\n",
             "cli/__init__.py": "from .process import y\n", "cli/opts.py": "x = 1\n",
             "cli/process.py": "from geoml.role_main import z\ny = 2\n"}
    for name, text in files.items():
        (tmp_path / "tools" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tools" / name).write_text(text)
    assert report(tmp_path)["circles"] == [["geoml.cli", "geoml.cli.process", "geoml.role_main"]]
