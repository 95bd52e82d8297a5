"""isolated: each region trains a model of its own on its own data and hears of no other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geoml.roles.gaia import GaiaHub, GaiaMirror
from geoml.roles.ps import PSShard
from geoml.roles.ps_plan import PSPlan
from geoml.workloads import Workload

from .config import RunConfig
from .ps import PSSystem, ps_system
from .registry import register


def isolated_summary(final: dict[str, Any], regions: Sequence[str]) -> dict[str, Any]:
    """Per region of an isolated run: its model's global and own-test scores."""
    return {r: {"global": {k.split(":", 1)[1]: v for k, v in final.items()
                           if k.startswith(f"{r}:") and ":own_" not in k},
                "own": {k.split(":own_", 1)[1]: v for k, v in final.items()
                        if k.startswith(f"{r}:own_")}}
            for r in regions}


class Isolated(PSSystem):
    """A replica per region (as gaia) with no mirror: every region's model is scored on
    the global held-out set and on its own region's."""

    def region_tests(self, workload: Workload, plan: PSPlan) -> dict[str, np.ndarray] | None:
        return workload.test_regions(list(plan.data_regions))

    def summarize(self, cfg: RunConfig, plan: PSPlan, shards: list[PSShard],
                  mirrors: list[GaiaMirror | GaiaHub], final: dict[str, Any],
                  evaluated: str) -> dict[str, Any]:
        return {"isolated": isolated_summary(final, list(plan.data_regions))}


ISOLATED = register(ps_system(
    "isolated", "each region trains its own model on its own data; nothing crosses the WAN",
    Isolated()))
