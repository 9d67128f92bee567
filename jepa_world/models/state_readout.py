"""State readout: decode robot-state dims (e.g. the end-effector position) from one frame's latents.

Planning toward a goal *image* knows the robot's own proprio now but not the goal's. The readout
is trained during post-training, on the frozen encoder's latents of the same trajectories, to
regress chosen state dims; at planning time it decodes them from the goal image's latent, so an
objective can add "how far will the end effector be from where the goal image shows it"
(``planners.objectives``) to the latent energy. The latent distance of a thin arm to its goal
pose is flat once the two stop overlapping (docs/frozen_readout_baseline.md); the decoded position gives
the planner a slope everywhere.

    readout = StateReadout(StateReadoutConfig(frame_tokens=64, dim=96, state_dims=(0, 1, 2)))
    ee = readout(z)      # (..., N, D) latents -> (..., len(state_dims)) in env units

It reads the encoder's token grid pooled by its own ``latent_pool`` (default 1: the full grid),
not the world model's planning latents: average-pooling 2x2 patches for cheap planning loses
where inside the patch the arm is (held-out median error 7.8 cm pooled vs 3.2 cm unpooled with the
same readout, docs/frozen_readout_baseline.md). ``WorldModel.decode_state(frames)`` does the encoding.

``state_dims[i]`` is also the state dim that action dim i displaces (end-effector delta actions,
as in V-JEPA 2-AC), which is how the objective predicts the state a plan ends in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class StateReadoutConfig:
    frame_tokens: int  # N latent tokens per frame (after latent_pool)
    dim: int  # D latent channels
    state_dims: tuple[int, ...]  # env-state dims decoded; action dim i displaces state dim state_dims[i]
    latent_pool: int = 1  # average-pool the encoder's token grid by this factor per side
    token_dim: int = 32  # each token is projected to this width before the tokens are concatenated
    hidden_dim: int = 256
    # Targets are regressed standardised; the statistics of the training split convert back.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.state_dims = tuple(int(d) for d in self.state_dims)
        self.mean = tuple(float(v) for v in self.mean) or (0.0,) * len(self.state_dims)
        self.std = tuple(float(v) for v in self.std) or (1.0,) * len(self.state_dims)
        if not self.state_dims or min(self.state_dims) < 0 or len(set(self.state_dims)) != len(self.state_dims):
            raise ValueError(f"StateReadoutConfig.state_dims must be distinct non-negative ints, got {self.state_dims}")
        for name in ("frame_tokens", "dim", "latent_pool", "token_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"StateReadoutConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.mean) != len(self.state_dims) or len(self.std) != len(self.state_dims) or min(self.std) <= 0:
            raise ValueError(
                f"StateReadoutConfig.mean/std need {len(self.state_dims)} values (std > 0), got {self.mean}/{self.std}"
            )


class StateReadout(nn.Module):
    """Per-token projection, concatenation (keeps where each token is), then a 2-layer MLP."""

    def __init__(self, config: StateReadoutConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_proj = nn.Linear(c.dim, c.token_dim)
        self.mlp = nn.Sequential(
            nn.Linear(c.frame_tokens * c.token_dim, c.hidden_dim),
            nn.GELU(),
            nn.Linear(c.hidden_dim, c.hidden_dim),
            nn.GELU(),
            nn.Linear(c.hidden_dim, len(c.state_dims)),
        )
        self.register_buffer("mean", torch.tensor(c.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(c.std, dtype=torch.float32), persistent=False)

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Record the training split's target statistics (kept in config.json)."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape or bool((std <= 0).any()):
            raise ValueError(f"readout statistics must be {tuple(self.mean.shape)} with std > 0, "
                             f"got {tuple(mean.shape)}/{tuple(std.shape)}")
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.config.mean = tuple(float(v) for v in mean.tolist())
        self.config.std = tuple(float(v) for v in std.tolist())

    def forward_standardized(self, z: Tensor) -> Tensor:
        """(..., N, D) latents -> (..., K) standardised state."""
        if z.shape[-2:] != (self.config.frame_tokens, self.config.dim):
            raise ValueError(f"state readout expects latents (..., {self.config.frame_tokens}, {self.config.dim}), "
                             f"got {tuple(z.shape)}")
        return self.mlp(self.token_proj(z).flatten(-2))  # (..., N*token_dim) -> (..., K)

    def forward(self, z: Tensor) -> Tensor:
        """(..., N, D) latents -> (..., K) state dims in env units."""
        return self.forward_standardized(z) * self.std + self.mean

    def standardize(self, states: Tensor) -> Tensor:
        """(..., S) full env states -> (..., K) standardised regression targets."""
        return (states[..., list(self.config.state_dims)] - self.mean) / self.std
