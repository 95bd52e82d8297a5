"""The `geoml` command: one handler per subcommand, in COMMANDS (the parser is
`options.build_parser`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from geoml.bus import GeomlError

from .commands import (
    cartel_main,
    compare_main,
    demo_command,
    filter_replay_main,
    inspect_command,
    keys_command,
    run_command,
    topo_command,
)
from .options import build_parser
from .process import launch_main, role_command, router_command

#: Subcommand -> handler; a handler returns the exit code, or None for 0.
COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "demo": demo_command, "compare": compare_main, "cartel": cartel_main,
    "filter-replay": filter_replay_main, "run": run_command, "launch": launch_main,
    "inspect": inspect_command, "topo": topo_command, "keys": keys_command,
    "router": router_command, "role": role_command,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `geoml` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args) or 0
    except (GeomlError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"geoml: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
