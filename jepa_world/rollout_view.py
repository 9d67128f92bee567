"""See what a world model predicts: an open-loop rollout laid against what really happened.

The world model has no pixel decoder, so a predicted latent is shown as the *observed frame whose
latent is nearest to it* (in the planner's energy). If prediction h lands nearest frame h, the
model tracks the motion; if every prediction lands nearest frame 0, it is copying its input.

    view = view_rollout(world_model, frames, states, actions)  # (T,H,W,3) uint8, (T,Ds), (T-1,A)
    plot_rollout(view, "rollout.png")

``scripts/rollout.py`` records an episode in an env and writes this plot.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jepa_world.world_model import WorldModel


@dataclass
class RolloutView:
    frames: np.ndarray  # (T, H, W, 3) observed frames; frame 0 is the model's only visual input
    predicted_error: np.ndarray  # (T-1,) energy(prediction for step h, latent of frame h), h = 1..T-1
    copy_last_error: np.ndarray  # (T-1,) energy(latent of frame 0, latent of frame h): the do-nothing predictor
    nearest_frame: np.ndarray  # (T-1,) index of the observed frame whose latent is nearest each prediction


@torch.no_grad()
def view_rollout(world_model: WorldModel, frames: np.ndarray, states: np.ndarray, actions: np.ndarray) -> RolloutView:
    """Roll the model out from frame 0 with the recorded actions and compare with the recorded frames."""
    frames, states, actions = np.asarray(frames), np.asarray(states, np.float32), np.asarray(actions, np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got shape {frames.shape} dtype {frames.dtype}")
    steps = len(frames)
    if steps < 2 or actions.shape[0] != steps - 1 or len(states) != steps:
        raise ValueError(f"need T >= 2 frames, T states and T-1 actions; got {steps} frames, {len(states)} states, "
                         f"{actions.shape[0]} actions")
    world_model.eval()
    latents = world_model.encode(torch.from_numpy(frames))  # (T, N, D)
    state0 = torch.from_numpy(states[:1]) if world_model.predictor.config.state_dim else None
    predicted = world_model.rollout(latents[:1], state0, torch.from_numpy(actions)[None])[0]  # (T-1, N, D)
    # energy of every prediction against every observed frame: (T-1, T); row h-1 holds prediction h
    pairwise = WorldModel.energy(predicted[:, None], latents[None])
    return RolloutView(
        frames=frames,
        predicted_error=pairwise[:, 1:].diagonal().numpy(),  # prediction h against frame h
        copy_last_error=WorldModel.energy(latents[:1], latents[1:]).numpy(),
        nearest_frame=pairwise.argmin(dim=1).numpy(),
    )


def plot_rollout(view: RolloutView, path: str | os.PathLike, title: str = "", max_columns: int = 8) -> Path:
    """Observed frames over the frames nearest each prediction, beside error and nearest-index curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jepa_world.atomic_files import save_figure

    horizon = len(view.predicted_error)
    shown = np.unique(np.linspace(1, horizon, min(max_columns, horizon)).round().astype(int))  # steps h >= 1
    fig = plt.figure(figsize=(1.6 * len(shown) + 7.0, 4.0))
    grid = fig.add_gridspec(2, len(shown) + 2, width_ratios=[1.0] * len(shown) + [2.2, 2.2])
    for column, step in enumerate(shown):
        top, bottom = fig.add_subplot(grid[0, column]), fig.add_subplot(grid[1, column])
        top.imshow(view.frames[step])
        top.set_title(f"t={step}", fontsize=8)
        nearest = int(view.nearest_frame[step - 1])
        bottom.imshow(view.frames[nearest])
        bottom.set_title(f"pred ~ t={nearest}", fontsize=8, color="tab:green" if nearest == step else "tab:red")
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        if column == 0:
            top.set_ylabel("observed", fontsize=8)
            bottom.set_ylabel("predicted\n(nearest frame)", fontsize=8)

    steps = np.arange(1, horizon + 1)
    errors = fig.add_subplot(grid[:, len(shown)])
    errors.plot(steps, view.predicted_error, marker="o", markersize=3, label="world model")
    errors.plot(steps, view.copy_last_error, marker="s", markersize=3, linestyle="--", label="copy frame 0")
    errors.set_xlabel("steps ahead (open loop)")
    errors.set_ylabel("latent energy to the observed frame")
    errors.legend(fontsize=8)
    errors.grid(alpha=0.3)

    nearest_ax = fig.add_subplot(grid[:, len(shown) + 1])
    nearest_ax.plot(steps, steps, color="grey", linewidth=0.8, linestyle="--", label="ideal")
    nearest_ax.plot(steps, view.nearest_frame, marker="o", markersize=3, label="nearest observed frame")
    nearest_ax.set_xlabel("steps ahead (open loop)")
    nearest_ax.set_ylabel("frame index")
    nearest_ax.legend(fontsize=8)
    nearest_ax.grid(alpha=0.3)
    fig.suptitle(title or "open-loop rollout from frame 0 with the recorded actions", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
