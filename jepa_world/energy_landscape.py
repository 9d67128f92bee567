"""Energy landscape around a recorded action (V-JEPA 2's planning notebook, as a tool).

Take a window of a recorded trajectory: its first frame is the observation, its last frame
the goal, and its recorded actions the ground truth. Sweep the first action over a grid in
two action dims around the recorded one (the other dims and later actions stay recorded),
roll each candidate through the world model and score the predicted last frame against the
goal latent. A good world model puts the minimum of this surface near the recorded action.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from planners.objectives import ObjectiveConfig, build_cost_fn, uses_states

log = logging.getLogger(__name__)


@dataclass
class Landscape:
    axis_values: tuple[np.ndarray, np.ndarray]  # (G,), (G,) values of the two swept action dims
    dims: tuple[int, int]
    energies: np.ndarray  # (G, G), energies[i, j] at dims[0] = axis_values[0][i], dims[1] = axis_values[1][j]
    true_action: np.ndarray  # (A,) recorded first action
    best_action: np.ndarray  # (A,) grid argmin
    true_energy: float  # energy of the recorded action sequence

    @property
    def argmin_error(self) -> float:
        """L2 distance (action units) between the grid argmin and the recorded action in the swept dims."""
        d = list(self.dims)
        return float(np.linalg.norm(self.best_action[d] - self.true_action[d]))


@torch.no_grad()
def compute_landscape(world_model, frames: Tensor, actions: Tensor, states: Tensor | None, dims: tuple[int, int] = (0, 1),
                      radius: float | None = None, points: int = 21, objective: ObjectiveConfig | None = None) -> Landscape:
    """frames (T,3,H,W) uint8, actions (T-1,A), states (T,S) of one window -> energy over a grid of first actions.

    ``radius`` defaults to 2x the largest |action| component of the window (at least 1e-3).
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"frames must be (T>=2, 3, H, W), got {tuple(frames.shape)}")
    if actions.ndim != 2 or actions.shape[0] != frames.shape[0] - 1:
        raise ValueError(f"actions must be (T-1={frames.shape[0] - 1}, A), got {tuple(actions.shape)}")
    action_dim = actions.shape[1]
    if len(dims) != 2 or dims[0] == dims[1] or not all(0 <= d < action_dim for d in dims):
        raise ValueError(f"dims must be two different action dims in [0, {action_dim}), got {dims}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if radius is None:
        radius = max(2 * float(actions.abs().max()), 1e-3)
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    device = next(world_model.parameters()).device
    frames, actions = frames.to(device), actions.to(device).float()
    z = world_model.encode(frames[[0, -1]])  # (2, N, D): observation, goal
    state0 = states[:1].to(device).float() if states is not None and uses_states(world_model) else None
    # The latent energy alone: the landscape shows what the world model's predictions make of the actions.
    objective = replace(objective or ObjectiveConfig(), readout_weight=0.0)
    cost_fn = build_cost_fn(world_model, z[:1], state0, z[1:], objective)

    offsets = torch.linspace(-radius, radius, points, device=device)
    a0, a1 = actions[0, dims[0]] + offsets, actions[0, dims[1]] + offsets
    grid = actions.expand(points * points, -1, -1).clone()  # (G*G, H, A)
    grid[:, 0, dims[0]] = a0.repeat_interleave(points)
    grid[:, 0, dims[1]] = a1.repeat(points)
    energies = cost_fn(grid[None])[0].reshape(points, points)  # (G, G)
    true_energy = float(cost_fn(actions[None, None])[0, 0])
    best = int(energies.argmin())
    landscape = Landscape((a0.cpu().numpy(), a1.cpu().numpy()), tuple(dims), energies.cpu().numpy(),
                          actions[0].cpu().numpy(), grid[best, 0].cpu().numpy(), true_energy)
    log.info("energy landscape: recorded action %s energy %.4f, grid argmin %s (error %.4f)",
             np.round(landscape.true_action, 4), true_energy, np.round(landscape.best_action, 4), landscape.argmin_error)
    return landscape


def plot_landscape(landscape: Landscape, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jepa_world.atomic_files import save_figure

    x, y = landscape.axis_values
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mesh = ax.pcolormesh(x, y, landscape.energies.T, shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="energy")
    ax.contour(x, y, landscape.energies.T, levels=10, colors="white", linewidths=0.5, alpha=0.6)
    d0, d1 = landscape.dims
    ax.plot(landscape.true_action[d0], landscape.true_action[d1], "r*", markersize=14, label="recorded action")
    ax.plot(landscape.best_action[d0], landscape.best_action[d1], "wx", markersize=10, mew=2, label="energy argmin")
    ax.set_xlabel(f"action[{d0}]")
    ax.set_ylabel(f"action[{d1}]")
    ax.set_title(title or f"energy around the recorded action (argmin error {landscape.argmin_error:.4f})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
