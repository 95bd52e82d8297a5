"""gaia (NSDI'17): a full model replica per region; Approximate Synchronous Parallel
between regions (significance filter, selective barrier, mirror clock, overlay hubs)."""

from __future__ import annotations

from typing import Any

from geoml.roles.gaia import GaiaHub, GaiaMirror, GaiaShard
from geoml.roles.ps import PSShard
from geoml.roles.ps_plan import PSPlan

from ..ps_roles import gaia_summary
from .config import RunConfig
from .ps import PSSystem, ps_system
from .registry import register


class Gaia(PSSystem):
    """baseline's roles, each region's shards holding a replica, plus a mirror per region
    (and a hub per overlay group with --gaia-hubs)."""

    def summarize(self, cfg: RunConfig, plan: PSPlan, shards: list[PSShard],
                  mirrors: list[GaiaMirror | GaiaHub], final: dict[str, Any],
                  evaluated: str) -> dict[str, Any]:
        filters = [s.filter for s in shards if isinstance(s, GaiaShard)]
        return gaia_summary(cfg, evaluated, sum(f.counters.updated for f in filters),
                            sum(f.counters.sent for f in filters),
                            {m.ep.address: dict(m.counters) for m in mirrors})


GAIA = register(ps_system(
    "gaia", "a model replica per region; only significant updates cross the WAN, under a "
    "mirror clock", Gaia(), guide="docs/systems-gaia.md"))

TOPK = register(ps_system(
    "topk", "Gaia's shape, but each clock a mirror sends the top-k share of its region's "
    "accumulated update (error feedback keeps the rest), not what is significant", Gaia(),
    guide="docs/systems-diloco.md"))
