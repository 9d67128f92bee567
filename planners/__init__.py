"""Latent planners: CEM, MPPI and projected Adam behind one ``plan(cost_fn, ...)`` interface."""
from __future__ import annotations

from dataclasses import fields

from planners.base import ActionBounds, Planner, PlanResult
from planners.cem import CEMConfig, CEMPlanner
from planners.gradient import GradientConfig, GradientPlanner
from planners.mppi import MPPIConfig, MPPIPlanner

PLANNERS: dict[str, tuple[type[Planner], type]] = {
    "cem": (CEMPlanner, CEMConfig),
    "mppi": (MPPIPlanner, MPPIConfig),
    "adam": (GradientPlanner, GradientConfig),
}


def make_planner(name: str, **config) -> Planner:
    """Build a planner by registry name; unknown names or config keys raise with the valid choices."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose one of {sorted(PLANNERS)}")
    planner_cls, config_cls = PLANNERS[name]
    valid = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown {name} planner setting(s) {unknown}; valid settings are {sorted(valid)}")
    return planner_cls(config_cls(**config))


__all__ = ["ActionBounds", "CEMConfig", "CEMPlanner", "GradientConfig", "GradientPlanner", "MPPIConfig",
           "MPPIPlanner", "PLANNERS", "Planner", "PlanResult", "make_planner"]
