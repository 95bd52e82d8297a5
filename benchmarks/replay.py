"""Run a benchmark case against an earlier commit of geoml, in the same session as the
current code: the "replay of today's code" that [fast]'s figures are compared with.

`replay_tree(rev)` extracts `rev` with `git archive` and lays it out as the installed
package would be (pyproject's package-dir of that commit), so that a child process with
PYTHONPATH set to it imports that commit's geoml instead of the working tree's.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def replay_tree(rev: str, into: Path | None = None) -> Path:
    """A directory holding package `geoml` as of commit `rev` (RuntimeError, saying why,
    outside a git clone or for an unknown commit)."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev],
                              check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise RuntimeError("replaying an earlier commit needs git") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"git archive {rev}: {exc.stderr.decode().strip()} (the replay "
                           "needs a git clone that holds that commit)") from None
    root = into or Path(tempfile.mkdtemp(prefix=f"geoml-replay-{rev[:8]}-"))
    src = root / "src"
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(src, filter="data")
    package_dir = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    tree = root / "tree"
    # the deepest packages last, so that each links inside its parent's copy
    for name, rel in sorted(package_dir.items(), key=lambda kv: kv[0].count(".")):
        target = tree.joinpath(*name.split("."))
        target.parent.mkdir(parents=True, exist_ok=True)
        if "." in name:
            target.symlink_to(src / rel, target_is_directory=True)
        else:
            _copy_links(src / rel, target)
    return tree


def _copy_links(src: Path, dst: Path) -> None:
    """`dst` as a directory of symlinks to `src`'s entries (so subpackages can be added
    beside them without touching `src`)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        (dst / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


def python_env(tree: Path | None) -> dict[str, str]:
    """The environment for a child that imports geoml from `tree` (None: the current
    code, as installed)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_case(script: Path, args: list[str], tree: Path | None) -> str:
    """Run `script ARGS` in a child with `tree`'s geoml; its standard output."""
    out = subprocess.run([sys.executable, str(script), *args], env=python_env(tree),
                         check=True, capture_output=True, text=True)
    return out.stdout
