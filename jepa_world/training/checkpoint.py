"""Resuming a training run from its checkpoint (the file format lives in jepa_world.model_format)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from jepa_world.model_format import CheckpointError, load_modules, read_config, read_train_state

log = logging.getLogger(__name__)


def check_config_matches(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str], source: str | os.PathLike
) -> None:
    """Raise if any dotted ``keys`` differ between the saved and the current config."""

    def lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
        node: Any = cfg
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return "<absent>"
            node = node[part]
        return node

    for key in keys:
        old, new = lookup(saved, key), lookup(current, key)
        if old != new:
            raise CheckpointError(
                f"config mismatch with checkpoint {source}: '{key}' was {old!r} there but is {new!r} now; "
                "resume with the original settings or start a new output_dir"
            )


def resume_from(
    last: str | os.PathLike, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
    current_config: Mapping[str, Any], must_match: Sequence[str], world_size: int,
) -> int:
    """Restore modules, optimizer and RNG from a checkpoint dir; returns its step.

    Refuses (CheckpointError) when any dotted key in ``must_match`` differs from the saved config, or
    when the checkpoint was written by a different number of processes (each rank draws its own
    batches, so the data order would change).
    """
    from jepa_world.training.run import restore_rng_state  # run imports nothing from here; avoids a cycle

    check_config_matches(read_config(last), current_config, must_match, last)
    state = read_train_state(last)
    saved_world_size = int(state.get("world_size", 1))  # written since the world size is recorded; older runs: 1
    if saved_world_size != world_size:
        raise CheckpointError(f"{last} was written by {saved_world_size} process(es) but this run has {world_size}; "
                              "the data order would change: resume with the same number of processes")
    load_modules(last, modules)
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"])
    log.info("resumed from %s at step %d", last, int(state["step"]))
    return int(state["step"])
