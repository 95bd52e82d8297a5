"""The systems geoml runs, one file each, over one harness; `registry` lists them.

Importing this package registers the built-in systems (lan and baseline in `ps`, gaia
and topk in `gaia`, then isolated, centralized, fedavg, diloco), and the edge family's
stream systems in `edge` (cartel and isolated in `cartel`, centralized and fedavg in
`edge_baselines`)."""

from . import ps, gaia, isolated, centralized, fedavg, diloco  # noqa: F401, I001  (they register, in this order)
from . import cartel, edge_baselines  # noqa: F401  (the edge family registers in edge)
from ..results import write_results
from .config import (GaiaOptions, LinkFault, RunConfig, RunResult, parse_fault, parse_sync,
                     parse_until)
from .registry import System, get_system, names, problems, process_systems, register

__all__ = ["GaiaOptions", "LinkFault", "RunConfig", "RunResult", "System", "get_system", "names",
           "parse_fault", "parse_sync", "parse_until", "problems", "process_systems",
           "register", "run_system"]


async def run_system(cfg: RunConfig) -> RunResult:
    """Run `cfg.system` all-in-one (on the running loop); returns its results, also
    written to `cfg.out` (summary.json, curve.csv, curve.png) when it is set."""
    result = await get_system(cfg.system).run(cfg)
    if cfg.out is not None:
        write_results(cfg.out, result.summary, result.curve,
                      f"{cfg.system} on {result.summary['topology']}")
    return result
